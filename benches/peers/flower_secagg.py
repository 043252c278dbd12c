"""One Flower round at N clients x D float32 elements, with SecAgg+ and without, in Flower's
simulation engine, on this machine. Prints one JSON line, the peer figure for
`conclave bench secagg` (docs/BENCHMARKS.md).

Setup (loopback only; Ray must not bind the machine's address):
    python3 -m venv /tmp/flwr-venv && /tmp/flwr-venv/bin/pip install "flwr[simulation]==1.42.0"
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 /tmp/flwr-venv/bin/python benches/peers/flower_secagg.py \
        --participants 100 --dim 1000000 --shares 11 --threshold 6
"""

import argparse
import json
import time

import numpy as np
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.common import Context, ndarrays_to_parameters
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.simulation import run_simulation


def one_round(n: int, dim: int, secagg: bool, shares: int, threshold: int) -> float:
    class Client(NumPyClient):
        def fit(self, parameters, config):
            # The same synthetic update as conclave's bench: uniform noise, L2 norm 0.5.
            u = np.random.uniform(-1.0, 1.0, dim).astype(np.float32)
            u *= 0.5 / np.linalg.norm(u)
            return [u], 100, {}

    def client_fn(context: Context):
        return Client().to_client()

    client_app = ClientApp(client_fn=client_fn, mods=[secaggplus_mod] if secagg else [])
    strategy = FedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=n,
        min_available_clients=n,
        initial_parameters=ndarrays_to_parameters([np.zeros(dim, dtype=np.float32)]),
    )
    elapsed = {}
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        ctx = LegacyContext(context=context, config=ServerConfig(num_rounds=1), strategy=strategy)
        fit = SecAggPlusWorkflow(num_shares=shares, reconstruction_threshold=threshold) if secagg else None
        workflow = DefaultWorkflow(fit_workflow=fit) if fit else DefaultWorkflow()
        start = time.perf_counter()
        workflow(grid, ctx)
        elapsed["s"] = time.perf_counter() - start

    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=n,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )
    return elapsed["s"]


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--participants", type=int, default=100)
    p.add_argument("--dim", type=int, default=1_000_000)
    p.add_argument("--shares", type=int, default=11)  # SecAgg+ wants an odd number
    p.add_argument("--threshold", type=int, default=6)
    a = p.parse_args()
    secagg_s = one_round(a.participants, a.dim, True, a.shares, a.threshold)
    plain_s = one_round(a.participants, a.dim, False, a.shares, a.threshold)
    print(json.dumps({
        "peer": "flwr 1.42.0 SecAgg+",
        "participants": a.participants,
        "dim": a.dim,
        "num_shares": a.shares,
        "reconstruction_threshold": a.threshold,
        "secagg_s": secagg_s,
        "plain_s": plain_s,
        "ratio": secagg_s / plain_s,
    }))
