"""Endless: a live instrument that turns text prompts into an endless, evolving soundscape."""

import os as _os

__version__ = "0.1.0"

# numpy asks the kernel for transparent huge pages for every array of 4 MiB and more (our clips);
# the kernel's khugepaged then collapses them into huge pages, and on a kernel without preemption it
# holds a CPU for 20-40 ms while jackd and our audio thread wait (benchmarks/bench_live.py saw it in
# every underflow of a run). Set before numpy is imported: here, and in the generator worker, which
# inherits the environment. A value the user set wins.
_os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")
