"""Facts the tests check against that come from the planner issue, kept in one place."""

# The keys `tnplan plan --json` (and Plan.summary()) must provide at least.
SUMMARY_KEYS = {
    "path",
    "flops",
    "log10_flops",
    "contraction_cost",
    "peak_size",
    "log2_size",
    "write",
    "sliced_indices",
    "n_slices",
    "optimal",
    "planning_time_s",
}
