"""Side-by-side benchmarks of popcon-site against bare Python and popularity-contest 0.4.1.

Run with ``nox -s bench`` (see ``benchmarks/README.md``).  Not a test: it
prints and records measurements, it never fails on a missed target.
"""
