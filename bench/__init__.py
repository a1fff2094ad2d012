"""vmsnap benchmarks: ``python -m bench [--quick] [--json FILE]``.

Every figure is measured beside a baseline taken in the same run on the same
machine (these machines are shared and noisy): medians, percentiles and ratios,
never a lone absolute time.
"""
