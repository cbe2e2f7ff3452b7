"""Run by tests/test_distributed.py under torchrun: several tiny runs in one process group (a launch
costs seconds), then the test split of given weights evaluated by the group.

    torchrun --standalone --nproc_per_node 2 tests/distributed_driver.py SPEC.json

SPEC: {"results": folder, "out": json path, "runs": {name: [model, task, overrides]},
"weights": {name: a best.pt whose weights the group evaluates on the run's test split}}.
"""
import json
import sys

import torch

from seqbench import config, distributed, registry
from seqbench.build import build
from seqbench.runner import Runner


def main(path: str) -> None:
    spec = json.loads(open(path).read())
    world = distributed.init("cpu")
    out = {}
    for name, (model, task, over) in spec["runs"].items():
        cfg = config.resolve(registry.get_model(model), registry.get_task(task), "tiny", over)
        out[name] = Runner(cfg, results=spec["results"], quiet=True).fit()["run_id"]
        if name in spec["weights"]:
            setup = build(cfg)
            setup.model.load_state_dict(torch.load(spec["weights"][name], weights_only=True)["model"])
            out[f"{name}:eval"] = setup.evaluate("test")
    if world.main:
        with open(spec["out"], "w") as f:
            json.dump(out, f)
    distributed.finish()


if __name__ == "__main__":
    main(sys.argv[1])
