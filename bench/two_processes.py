"""Scaling out: fan7 steps/s of two Cameron processes sharing one Redis against one
process, measured in the same run (each as in fan7.py). Prints both and the ratio.
Usage: python bench/two_processes.py [--tickets 2000] [--concurrency 500]"""
import argparse

import fan7
import harness


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--tickets', type=int, default=2000)
    parser.add_argument('--concurrency', type=int, default=500)
    args = parser.parse_args()
    redis_url, catalogue, step_server = fan7.prepare()
    one = fan7.measure(redis_url, catalogue, 1, args.tickets, args.concurrency)
    two = fan7.measure(redis_url, catalogue, 2, args.tickets, args.concurrency)
    ratio = two['steps_per_s'] / one['steps_per_s']
    figures = {'one': one, 'two': two, 'ratio': round(ratio, 2), 'step_server': step_server}
    harness.report('two_processes', figures,
                   f"1 process {one['steps_per_s']} steps/s, 2 processes {two['steps_per_s']} "
                   f"steps/s: {ratio:.2f}x (goal >= 1.7 on 2 cores, which the step server, "
                   f"Redis and the load driver share), errors {one['errors']}+{two['errors']}")
    return 1 if one['errors'] or two['errors'] else 0


if __name__ == '__main__':
    raise SystemExit(main())
