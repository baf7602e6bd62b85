"""Multi-host start-up on JAX's own multi-controller runtime (`jax.distributed`).

Every process of a run executes the same command. Where the platform describes
the cluster (TPU pods, SLURM, Open MPI) `jax.distributed.initialize()` finds it
by itself; elsewhere the command names it with --coordinator_address,
--num_processes and --process_id (process 0 hosts the coordinator).

JAX aborts the whole process (a C++ fatal error, no Python exception) when a
process cannot join in time, so the checks that can be made beforehand are made
here and raise clear errors: flag consistency, a reachable coordinator, a free
coordinator port; what only the rendezvous can reveal (too few processes were
started) is explained in a log line written right before it.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
import time

import jax
from absl import flags, logging

MODES = ("auto", "on", "off")

# Environment variables that mean "this process is one of several" on the platforms
# jax.distributed.initialize() can read by itself.
_CLUSTER_ENV = {
    "SLURM_NTASKS": "SLURM",
    "OMPI_COMM_WORLD_SIZE": "Open MPI",
    "TPU_WORKER_HOSTNAMES": "TPU pod",
    "MEGASCALE_NUM_SLICES": "TPU multislice",
}


class DistributedSetupError(RuntimeError):
    """A multi-host start-up that cannot work, named before JAX would abort on it."""


@dataclasses.dataclass(frozen=True)
class DistributedOptions:
    mode: str = "auto"  # auto: initialise when flags or the platform describe a cluster; on: always; off: never
    coordinator_address: str | None = None  # host:port of process 0
    num_processes: int | None = None
    process_id: int | None = None
    timeout_s: int = 300  # how long a process waits for the coordinator and for all processes to join


# option field -> flag name
_FLAG_NAMES = dict(
    mode="distributed",
    coordinator_address="coordinator_address",
    num_processes="num_processes",
    process_id="process_id",
    timeout_s="distributed_timeout_s",
)


def define_flags() -> None:
    """The multi-host flags of every entry point (call it where the entry point defines its flags)."""
    flags.DEFINE_enum(
        "distributed", "auto", MODES, "auto: join a cluster when the flags below or the platform (TPU pod, SLURM, "
        "Open MPI) describe one; on: always call jax.distributed.initialize(); off: single process."
    )  # fmt: skip
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (it hosts the coordinator).")
    flags.DEFINE_integer("num_processes", None, "Number of processes of the run.")
    flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).")
    flags.DEFINE_integer(
        "distributed_timeout_s", 300, "Seconds to wait for the coordinator and for every process to join."
    )


def initialize_from_flags() -> None:
    """`initialize` with the options of the flags of `define_flags` (after absl parsed them)."""
    initialize(DistributedOptions(**{field: flags.FLAGS[name].value for field, name in _FLAG_NAMES.items()}))


def _explicit(options: DistributedOptions) -> bool:
    return any(v is not None for v in (options.coordinator_address, options.num_processes, options.process_id))


def detected_cluster(environ: dict[str, str] | None = None) -> str | None:
    """The platform whose environment says this process is one of several, or None."""
    environ = os.environ if environ is None else environ
    for variable, platform in _CLUSTER_ENV.items():
        value = environ.get(variable, "")
        count = len(value.split(",")) if variable == "TPU_WORKER_HOSTNAMES" else int(value or 1)
        if count > 1:
            return platform
    return None


def parse_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DistributedSetupError(
            f"--coordinator_address={address!r} must be host:port (e.g. 10.0.0.2:8476), "
            "the address of process 0 and a port every process can reach."
        )
    return host.strip("[]"), int(port)


def validate(options: DistributedOptions) -> None:
    """Flag consistency, without touching the network."""
    if options.mode not in MODES:
        raise DistributedSetupError(f"--distributed={options.mode!r}; valid: {', '.join(MODES)}.")
    if options.mode == "off" and _explicit(options):
        raise DistributedSetupError("--distributed=off contradicts --coordinator_address/--num_processes/--process_id.")
    if options.timeout_s < 1:
        raise DistributedSetupError(f"--distributed_timeout_s={options.timeout_s} must be at least 1.")
    if not _explicit(options):
        return
    named = dict(
        coordinator_address=options.coordinator_address,
        num_processes=options.num_processes,
        process_id=options.process_id,
    )
    missing = [f"--{name}" for name, value in named.items() if value is None]
    if missing:
        raise DistributedSetupError(
            f"A multi-process run needs --coordinator_address, --num_processes and --process_id together; "
            f"missing {', '.join(missing)} (every process gets the same address and count, and its own id)."
        )
    if options.num_processes < 1:
        raise DistributedSetupError(f"--num_processes={options.num_processes} must be at least 1.")
    if not 0 <= options.process_id < options.num_processes:
        raise DistributedSetupError(
            f"--process_id={options.process_id} must be in [0, --num_processes={options.num_processes}); "
            "process ids are 0, 1, ..., num_processes - 1, each used by exactly one process."
        )
    parse_address(options.coordinator_address)


def _wait_for_coordinator(host: str, port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((host, port), timeout=min(5.0, timeout_s)).close()
            return
        except OSError as error:
            if time.monotonic() >= deadline:
                raise DistributedSetupError(
                    f"The coordinator {host}:{port} did not answer within {timeout_s:g} s ({error}). Start process 0 "
                    "with the same --coordinator_address (its host must be this address), check the port is open "
                    "between the hosts, or raise --distributed_timeout_s."
                ) from None
            time.sleep(0.25)


def _check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("", port))
        except OSError as error:
            raise DistributedSetupError(
                f"Process 0 cannot host the coordinator on port {port} ({error}): another run (or an earlier one "
                "that has not exited) holds it. Pick a free port in --coordinator_address on every process."
            ) from None


def initialize(options: DistributedOptions) -> None:
    """Joins the run's processes (or does nothing for a single-process run); then checks the result."""
    validate(options)
    if options.mode == "off":
        return
    cluster = detected_cluster()
    if not _explicit(options) and options.mode == "auto" and cluster is None:
        return  # one process
    if _explicit(options) and options.num_processes == 1:
        return
    if _explicit(options):
        host, port = parse_address(options.coordinator_address)
        if options.process_id == 0:
            _check_port_free(host, port)
        else:
            _wait_for_coordinator(host, port, options.timeout_s)
        logging.info(
            "Process %d of %d joining via the coordinator %s; waiting up to %d s for all %d processes. If JAX then "
            "aborts with DEADLINE_EXCEEDED (RegisterTask or barrier), fewer than %d processes were started with this "
            "--coordinator_address and --num_processes=%d: start the missing ones or fix the count.",
            options.process_id, options.num_processes, options.coordinator_address, options.timeout_s,
            options.num_processes, options.num_processes, options.num_processes,
        )  # fmt: skip
        sys.stderr.flush()
        jax.distributed.initialize(
            options.coordinator_address,
            options.num_processes,
            options.process_id,
            initialization_timeout=options.timeout_s,
        )
        if jax.process_count() != options.num_processes:
            raise DistributedSetupError(
                f"--num_processes={options.num_processes} but the coordinator formed a run of {jax.process_count()} "
                "processes: every process must be given the same --num_processes."
            )
    else:
        logging.info("Joining the %s cluster through jax.distributed.initialize().", cluster or "platform's")
        jax.distributed.initialize(initialization_timeout=options.timeout_s)
    logging.info(
        "Process %d of %d: %d local / %d global devices.",
        jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count(),
    )  # fmt: skip
