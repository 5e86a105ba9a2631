"""Scaling out: fan7 steps/s of two Cameron processes sharing one Redis against one
process, measured in the same run, in turns, one-two-two-one, --runs times over, so that
a drift of the machine's speed weighs on both alike.

Each measurement is of the steady state: clients start tickets and wait for each, without
pause, for --warmup seconds and then --seconds more, and only the tickets that end in the
last --seconds count (each ending is one PUBLISH, read from Redis's command statistics).
The load comes from wrk where it is installed: on two cores, the CPU a Python load driver
takes is CPU the second process does not get. For the same reason Redis, the step server
and wrk run under SCHED_BATCH (harness.run_helpers_in_batch); --helpers normal runs them
as ordinary processes, which costs the Cameron processes about a tenth of their steps.
Usage: python bench/two_processes.py [--seconds 10] [--warmup 3] [--concurrency 500] [--runs 3]
                                    [--driver wrk|python] [--helpers batch|normal]"""
import argparse
import statistics
import time

import gevent

import fan7
import harness


def measure(redis_url, catalogue, processes, seconds, warmup, concurrency, driver, run):
    servers = [harness.start_cameron(redis_url, catalogue, '--namespace', f'run{run}',
                                     name=f'cameron{i}') for i in range(processes)]
    load = harness.drive([base for _, base in servers], 'fan7', warmup + seconds + 1,
                         concurrency, driver)
    gevent.sleep(warmup)
    began, ended, before = time.monotonic(), harness.tickets_ended(redis_url), \
        harness.cpu_of_parts()
    gevent.sleep(seconds)
    wall = time.monotonic() - began
    ended = harness.tickets_ended(redis_url) - ended
    used = {part: cpu - before.get(part, 0) for part, cpu in harness.cpu_of_parts().items()}
    cpu = sum(cpu for part, cpu in used.items() if part.startswith('cameron'))
    failed = load.get()
    for process, _ in servers:
        process.terminate()
        process.wait()
    steps = max(ended * harness.STEPS_PER_TICKET, 1)
    return {'processes': processes, 'seconds': round(wall, 2), 'tickets_ended': ended,
            'steps_per_s': round(steps / wall, 1), 'cameron_cores': round(cpu / wall, 2),
            'cpu_us_per_step': round(cpu / steps * 1e6, 1), 'errors': failed,
            'others_us_per_step': {part: round(cpu / steps * 1e6, 1) for part, cpu
                                   in used.items() if not part.startswith('cameron')}}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--seconds', type=float, default=10)
    parser.add_argument('--warmup', type=float, default=3)
    parser.add_argument('--concurrency', type=int, default=500)
    parser.add_argument('--runs', type=int, default=3)
    parser.add_argument('--driver', choices=('wrk', 'python'), default=harness.default_driver())
    parser.add_argument('--helpers', choices=('batch', 'normal'), default='batch')
    args = parser.parse_args()
    if args.helpers == 'batch':
        harness.run_helpers_in_batch()
    redis_url, catalogue, step_server = fan7.prepare()
    runs = {1: [], 2: []}
    for i, processes in enumerate([1, 2, 2, 1] * args.runs):
        runs[processes].append(measure(redis_url, catalogue, processes, args.seconds,
                                       args.warmup, args.concurrency, args.driver, i))

    def median(n, name):
        return round(statistics.median(run[name] for run in runs[n]), 2)

    one, two = median(1, 'steps_per_s'), median(2, 'steps_per_s')
    errors = sum(run['errors'] for n in (1, 2) for run in runs[n])
    others = {part: round(statistics.median(run['others_us_per_step'][part]
                                            for run in runs[2]), 1)
              for part in runs[2][0]['others_us_per_step']}
    figures = {'one_steps_per_s': one, 'two_steps_per_s': two, 'ratio': round(two / one, 2),
               'one_cores': median(1, 'cameron_cores'), 'two_cores': median(2, 'cameron_cores'),
               'one_cpu_us_per_step': median(1, 'cpu_us_per_step'),
               'two_cpu_us_per_step': median(2, 'cpu_us_per_step'),
               'others_us_per_step_with_two': others, 'errors': errors,
               'step_server': step_server, 'driver': args.driver, 'helpers': args.helpers,
               'one': runs[1], 'two': runs[2]}
    # The ratio is the cores the Cameron processes got, times how their CPU per step held;
    # on a machine of few cores, what the other parts take decides the first.
    shares = ', '.join(f'{part} {us:.0f}' for part, us in others.items())
    harness.report('two_processes', figures,
                   f"1 process {one:.0f} steps/s, 2 processes {two:.0f} steps/s (medians of "
                   f"{2 * args.runs} runs each): {two / one:.2f}x (goal >= 1.7 on 2 cores); the "
                   f"Cameron processes used {figures['one_cores']} and {figures['two_cores']} "
                   f"cores, at {figures['one_cpu_us_per_step']:.0f} and "
                   f"{figures['two_cpu_us_per_step']:.0f} µs per step; with two, the other "
                   f"parts took, in µs of CPU per step: {shares} (load driver: {args.driver}"
                   f"{', not counted' if args.driver == 'python' else ''}; helpers "
                   f"scheduled {args.helpers}); {errors} errors")
    return 1 if errors else 0


if __name__ == '__main__':
    raise SystemExit(main())
