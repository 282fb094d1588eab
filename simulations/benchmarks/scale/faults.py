"""The faults both scale benchmarks inject: Byzantine nodes and log-normal stragglers."""


def fault_overrides(
    byzantine_fraction: float, latency_median: float, latency_sigma: float
) -> dict[str, object]:
    """Run-config keys for the faults, and one local epoch on the CPU per node.

    A ``byzantine_fraction`` of the nodes send Gaussian noise; every node waits a
    log-normal time (median ``latency_median`` seconds, ``latency_sigma``) before
    it replies.
    """
    return {
        "num-byzantine-nodes": 0,
        "byzantine-fraction": byzantine_fraction,
        "attack": "gaussian",
        "num-stragglers": 0,
        "latency-model": "log-normal",
        "latency-seconds": latency_median,
        "latency-sigma": latency_sigma,
        "local-epochs": 1,
        "device": "cpu",
    }
