"""Scaling out: fan7 steps/s of two Cameron processes sharing one Redis against one
process, measured in the same run (each as in fan7.py). Prints both and the ratio.
The two are measured in turns, one-two-two-one, --runs times over, so that a drift of the
machine's speed during the run weighs on both alike.
Usage: python bench/two_processes.py [--tickets 2000] [--concurrency 500] [--runs 1]"""
import argparse
import statistics

import fan7
import harness


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--tickets', type=int, default=2000)
    parser.add_argument('--concurrency', type=int, default=500)
    parser.add_argument('--runs', type=int, default=1)
    args = parser.parse_args()
    redis_url, catalogue, step_server = fan7.prepare()
    runs = {1: [], 2: []}
    for processes in [1, 2, 2, 1] * args.runs:
        runs[processes].append(
            fan7.measure(redis_url, catalogue, processes, args.tickets, args.concurrency))
    one, two = (round(statistics.median(run['steps_per_s'] for run in runs[n]), 1)
                for n in (1, 2))
    errors = sum(run['errors'] for n in (1, 2) for run in runs[n])
    figures = {'one_steps_per_s': one, 'two_steps_per_s': two, 'ratio': round(two / one, 2),
               'errors': errors, 'step_server': step_server, 'one': runs[1], 'two': runs[2]}
    harness.report('two_processes', figures,
                   f"1 process {one} steps/s, 2 processes {two} steps/s (medians of "
                   f"{2 * args.runs} runs each): {two / one:.2f}x (goal >= 1.7 on 2 cores, which "
                   f"the step server, Redis and the load driver share), {errors} errors")
    return 1 if errors else 0


if __name__ == '__main__':
    raise SystemExit(main())
