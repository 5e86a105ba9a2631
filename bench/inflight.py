"""Many tickets in flight: fan7 tickets whose every step takes 200 ms, all started at once
through the API. Prints the wall time from the first start to the last ticket done against
the ideal (3 levels x 200 ms), the most tickets in flight at once (taken and not ended, from
the processing list in Redis: the API starts tickets only so fast, so not all 10,000 are in
flight together), the server's peak memory and its growth per ticket in flight.
Usage: python bench/inflight.py [--tickets 10000] [--delay 0.2] [--outgoing 4000]"""
import argparse
import json
import time

import gevent.pool
import redis

import harness

DEPTH = 3  # start -> act_5 -> act_5_sub_1


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--tickets', type=int, default=10_000)
    parser.add_argument('--delay', type=float, default=0.2)
    parser.add_argument('--outgoing', type=int, default=4000,
                        help='max_outgoing_requests (each is a file descriptor)')
    parser.add_argument('--timeout', type=float, default=600)
    args = parser.parse_args()
    redis_url = harness.start_redis()
    steps = harness.start_slow_steps(args.delay)
    catalogue = harness.write_catalogue(steps, 'fan7')
    cameron, base = harness.start_cameron(
        redis_url, catalogue, '--max-outgoing-requests', str(args.outgoing),
        '--max-running-tickets', str(max(args.tickets, 1)), '--namespace', 'bench')
    harness.run_tickets([base], 'fan7', 20, 20)  # warm up
    rss_before = harness.rss_kib(cameron.pid)
    cpu_before = harness.cpu_seconds(cameron.pid)

    tickets = []
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    most = [0]  # the most tickets in flight at once, sampled
    sampler = gevent.spawn(_sample_in_flight, client, most)

    def start(i):
        _, _, answer = harness.call('POST', f'{base}/api/workflow/fan7/start',
                                    f'{{"key": "m{i}"}}'.encode())
        tickets.append(json.loads(answer)['ticket'])

    began = time.monotonic()
    gevent.pool.Pool(200).map(start, range(args.tickets))
    started = time.monotonic() - began
    states = _states(client, tickets)
    while sum(s in ('done', 'error') for s in states) < len(tickets):
        if time.monotonic() - began > args.timeout:
            break
        time.sleep(0.2)
        states = _states(client, tickets)
    wall = time.monotonic() - began
    cpu = harness.cpu_seconds(cameron.pid) - cpu_before
    peak = harness.peak_rss_kib(cameron.pid)
    sampler.kill()
    in_flight = most[0]
    done = states.count('done')
    ideal = DEPTH * args.delay
    figures = {'tickets': args.tickets, 'done': done, 'errors': len(tickets) - done,
               'step_delay_s': args.delay, 'wall_s': round(wall, 2), 'ideal_s': round(ideal, 3),
               'start_phase_s': round(started, 2),
               'steps_per_s': round(done * harness.STEPS_PER_TICKET / wall, 1),
               'cpu_s': round(cpu, 1), 'peak_rss_mib': round(peak / 1024, 1),
               'most_in_flight': in_flight,
               'kib_per_ticket': round((peak - rss_before) / max(in_flight, 1), 1),
               'max_outgoing_requests': args.outgoing}
    harness.report('inflight', figures,
                   f'{done}/{args.tickets} tickets done in {wall:.1f}s (ideal {ideal:.1f}s; '
                   f'starting them took {started:.1f}s), {figures["steps_per_s"]} steps/s, '
                   f'at most {in_flight} tickets in flight at once, '
                   f'peak RSS {figures["peak_rss_mib"]} MiB, '
                   f'{figures["kib_per_ticket"]} KiB more per ticket in flight, '
                   f'{figures["errors"]} errors')
    return 1 if figures['errors'] else 0


def _sample_in_flight(client, most):
    """Keep in most[0] the most tickets held in processing lists at once."""
    while True:
        lists = client.keys('bench:workflow:fan7:queue:processing:*')
        most[0] = max(most[0], sum(client.llen(key) for key in lists))
        time.sleep(0.05)


def _states(client, tickets):
    with client.pipeline(transaction=False) as pipe:
        for ticket in tickets:
            pipe.hget(f'bench:workflow:fan7:ticket:{ticket}', 'status.current')
        return pipe.execute()


if __name__ == '__main__':
    raise SystemExit(main())
