# Which distributions and which processes an admin chose to report.
#
# PYTHON_POPCONTEST_INCLUDE / _EXCLUDE (names or fnmatch patterns) and
# PYTHON_POPCONTEST_RANK0_ONLY.  Imported at exit only when one of them is set.

from popcon_site import MAX_NAME, normalize_name  # loaded already: the hook imported it

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

# Set for every rank by the launcher that started it, innermost launcher first: an MPI
# launcher inside a Slurm job (sbatch + mpirun) leaves the batch step's SLURM_PROCID=0
# in every rank, so Slurm's variable is read last (README, HPC).
RANK_VARIABLES = (
    "OMPI_COMM_WORLD_RANK",  # Open MPI's mpirun
    "PMIX_RANK",  # PMIx: Open MPI's mpirun, srun --mpi=pmix
    "PMI_RANK",  # PMI-1/2: MPICH and Intel MPI (hydra), srun --mpi=pmi2
    "MV2_COMM_WORLD_RANK",  # MVAPICH2
    "SLURM_PROCID",  # srun; in a batch script, the batch step's 0
)

_PATTERN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-*?[]!")


def parse_patterns(raw: str) -> "tuple[str, ...]":
    # Comma-separated distribution names (normalized here) or fnmatch patterns.
    # Raises ValueError with the offending item when one is neither.
    patterns = []
    for item in raw.split(","):
        pattern = normalize_name(item.strip())
        if not pattern:
            continue
        if not set(pattern) <= _PATTERN_CHARS or len(pattern) > MAX_NAME:
            raise ValueError(item)
        if not _brackets_balanced(pattern):  # fnmatch would take "[" literally: no match
            raise ValueError(item)
        patterns.append(pattern)
    return tuple(patterns)


def _brackets_balanced(pattern: str) -> bool:
    # Each "[" opens a set that a later "]" closes; no "]" outside a set.
    inside = False
    for index, char in enumerate(pattern):
        if char == "[" and not inside:
            inside, start = True, index
        elif char == "]" and inside and index > start + 1 + (pattern[start + 1] == "!"):
            inside = False
        elif char == "]" and not inside:
            return False
    return not inside


def matches_any(name: str, patterns: "tuple[str, ...]") -> bool:
    for pattern in patterns:
        if pattern == name:
            return True
        if any(c in pattern for c in "*?["):
            from fnmatch import fnmatchcase  # only for admins who use wildcards

            if fnmatchcase(name, pattern):
                return True
    return False


def rank(environ: "Mapping[str, str]") -> "int | None":
    # This process's MPI/Slurm rank; None outside a job.  The first of RANK_VARIABLES
    # that is set decides: when its value is no rank, an outer launcher's rank does
    # not describe this process either, so None (the process reports).
    for variable in RANK_VARIABLES:
        value = environ.get(variable, "").strip()
        if value:
            if value.isascii() and value.isdigit() and len(value) <= 18:  # int(): <= 4300 digits
                return int(value)
            return None
    return None
