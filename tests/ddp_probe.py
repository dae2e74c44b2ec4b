"""Run under ``accelerate launch`` by tests/test_distributed.py (not a test module itself).

``python ddp_probe.py train SPEC.json``: SPEC is a list of ``{"config": ..., "weights": DIR}``;
each config is trained in turn in the same process group, then every process saves its own copy
of the trained modules (model plus the defence's modules) as ``DIR/rank<i>.safetensors``, so the
test can compare what each process ended with, and the dtypes the model's and the defence's Linear
layers computed in (``DIR/dtypes<i>.json``: autocast at work or not).

``python ddp_probe.py eval MODEL_DIR DEV_FILE BATCH_SIZE``: the main process prints the
evaluation of the exported model (as the training loop evaluates) as one JSON line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def train(spec_file: str) -> None:
    import torch
    from safetensors.torch import save_file

    import asa_plugin.training.loop as loop
    from asa_plugin.config import load_config

    built = []
    dtypes: dict[str, set[str]] = {"model": set(), "extras": set()}  # output dtypes of Linear layers

    class Recorded(loop.TrainedModules):
        def __init__(self, *args):
            super().__init__(*args)
            built.append(self)
            for name, module in self.named_modules():
                if isinstance(module, torch.nn.Linear):
                    part = dtypes[name.split(".")[0]]
                    module.register_forward_hook(lambda m, a, out, part=part: part.add(str(out.dtype)))

    loop.TrainedModules = Recorded
    for item in json.loads(Path(spec_file).read_text()):
        built.clear()
        loop.train(load_config(item["config"]))
        from accelerate import PartialState

        out = Path(item["weights"])
        out.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in built[0].state_dict().items()}
        rank = PartialState().process_index
        save_file(tensors, str(out / f"rank{rank}.safetensors"))
        (out / f"dtypes{rank}.json").write_text(json.dumps({k: sorted(v) for k, v in dtypes.items()}))
        for seen in dtypes.values():
            seen.clear()
        PartialState().wait_for_everyone()


def evaluate(model_dir: str, dev_file: str, batch_size: str) -> None:
    from accelerate import Accelerator
    from asa_plugin.adapters.loading import load_adapter

    from asa_plugin.config import DataConfig
    from asa_plugin.data import load_split
    from asa_plugin.training.batching import EncodedDataset, make_loader
    from asa_plugin.training.evaluate import evaluate as run_evaluation

    accelerator = Accelerator()
    adapter = load_adapter(model_dir, 2)
    examples = load_split(DataConfig(dataset=None, dev_file=dev_file), "dev", 2)
    loader, _ = make_loader(EncodedDataset(examples, adapter.tokenizer, 32), adapter.tokenizer,
                            int(batch_size), 0, shuffle=False)
    model, loader = accelerator.prepare(adapter.model, loader)
    result = run_evaluation(adapter, model, loader, accelerator)
    if accelerator.is_main_process:
        print(json.dumps(result.metrics()))


if __name__ == "__main__":
    {"train": train, "eval": evaluate}[sys.argv[1]](*sys.argv[2:])
