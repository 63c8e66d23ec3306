"""The benchmark harness behind ``make bench`` and ``vxmirror bench``.

Parts that need only the installed package live here (the offline comparison, the
decode+aggregate core, memory per flow, statistics, the report); the scripts that need a
checkout and build tools (pytest-benchmark micro-benchmarks, the live sweep with its C
reference receiver, the forwarder scripts that use the in-repo test servers) live in
``bench/`` and are run from here when that directory is available.
"""
