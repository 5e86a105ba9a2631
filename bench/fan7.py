"""Engine throughput: fan7 tickets (7 steps each) against a fast step server.

Prints steps/s, Cameron's CPU microseconds per step (from /proc of the server process) and
p50/p99 ticket latency from start to done (each client uses ?wait=, no polling): the median
of --runs runs, each with a fresh server, and every run's figures, since a shared or
virtual machine's CPU speed can drift between runs.
Usage: python bench/fan7.py [--tickets 2000] [--concurrency 500] [--processes 1] [--runs 3]"""
import argparse
import statistics

import harness


def measure(redis_url, catalogue, processes, tickets, concurrency, flags=()):
    servers = [harness.start_cameron(redis_url, catalogue, *flags, name=f'cameron{i}')
               for i in range(processes)]
    bases = [base for _, base in servers]
    harness.run_tickets(bases, 'fan7', min(100, tickets), concurrency)  # warm up the pools
    before = sum(harness.cpu_seconds(p.pid) for p, _ in servers)
    latencies, errors, wall = harness.run_tickets(bases, 'fan7', tickets, concurrency)
    cpu = sum(harness.cpu_seconds(p.pid) for p, _ in servers) - before
    steps = len(latencies) * harness.STEPS_PER_TICKET
    for process, _ in servers:
        process.terminate()
        process.wait()
    return {'processes': processes, 'tickets': tickets, 'errors': len(errors),
            'wall_s': round(wall, 3), 'steps_per_s': round(steps / wall, 1),
            'cpu_us_per_step': round(cpu / max(steps, 1) * 1e6, 1),
            'p50_ms': round(harness.percentile(latencies, 50) * 1000, 1),
            'p99_ms': round(harness.percentile(latencies, 99) * 1000, 1)}


def prepare():
    """A Redis, a fast step server and the fan7 catalogue: (redis URL, catalogue, step server)."""
    redis_url = harness.start_redis()
    steps_base, step_server = harness.start_fast_steps()
    return redis_url, harness.write_catalogue(steps_base, 'fan7'), step_server


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--tickets', type=int, default=2000)
    parser.add_argument('--concurrency', type=int, default=500)
    parser.add_argument('--processes', type=int, default=1)
    parser.add_argument('--runs', type=int, default=3)
    args = parser.parse_args()
    redis_url, catalogue, step_server = prepare()
    runs = [measure(redis_url, catalogue, args.processes, args.tickets, args.concurrency)
            for _ in range(args.runs)]
    figures = {name: round(statistics.median(run[name] for run in runs), 1)
               for name in ('steps_per_s', 'cpu_us_per_step', 'p50_ms', 'p99_ms')}
    figures.update(errors=sum(run['errors'] for run in runs), step_server=step_server,
                   runs=runs)
    spread = ', '.join(f"{run['steps_per_s']}/{run['cpu_us_per_step']}" for run in runs)
    harness.report('fan7', figures,
                   f"{figures['steps_per_s']} steps/s, {figures['cpu_us_per_step']} µs CPU per "
                   f"step, p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms (medians of "
                   f"{args.runs} runs; steps/s / µs per run: {spread}), {figures['errors']} "
                   f"errors ({args.tickets} tickets x 7 steps, {args.processes} process(es), "
                   f"step server {step_server})")
    return 1 if figures['errors'] else 0


if __name__ == '__main__':
    raise SystemExit(main())
