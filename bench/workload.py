"""The fan7 workload the benches run, shared by the drivers and the step servers."""

# The fan7 workflow: start -> act_1..act_5 in parallel; act_5 -> act_5_sub_1. 7 POSTs.
FAN7 = {
    'start': {'name': 'start', 'data': {'order': 42},
              'next': [{'name': f'act_{i}', 'url': f'/act_{i}/{{key}}'} for i in range(1, 6)],
              'parallel': 'yes'},
    **{f'act_{i}': {'name': f'act_{i}', 'data': {'done': i}} for i in range(1, 5)},
    'act_5': {'name': 'act_5', 'next': [{'name': 'act_5_sub_1', 'url': '/act_5_sub_1/{key}'}]},
    'act_5_sub_1': {'name': 'act_5_sub_1', 'data': None},
}
STEPS_PER_TICKET = 7
