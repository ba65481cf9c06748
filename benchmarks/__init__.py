"""lxmert_fast benchmarks: pytest-benchmark suites (``pytest benchmarks/ --benchmark-only``), the
shared helpers in ``benchmarks.common`` and the report command ``python -m benchmarks.report``."""
