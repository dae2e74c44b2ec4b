"""Run under ``accelerate launch`` by tests/test_hf_trainer.py (not a test module itself).

``python hf_ddp_probe.py SPEC.json``: trains a DefenceTrainer as SPEC says (model, train file,
defence, per-process batch size, steps), then every process saves its own copy of the model's
and the defence modules' weights as ``OUT/rank<i>.safetensors``, so the test can compare them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(spec_file: str) -> None:
    from safetensors.torch import save_file
    from test_hf_trainer import plain_trainer

    spec = json.loads(Path(spec_file).read_text())
    out = Path(spec["out"])
    trainer = plain_trainer(out / "trainer", Path(spec["model"]), Path(spec["train_file"]), spec["defence"],
                            per_device_train_batch_size=spec["batch_size"], max_steps=spec["steps"],
                            group_by_length=False, logging_steps=1)
    trainer.train()
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in trainer.model.state_dict().items()}
    tensors |= {f"defence.{k}": v for k, v in trainer._defence_state_tensors().items()}
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / f"rank{trainer.args.process_index}.safetensors"))
    if trainer.is_world_process_zero():
        (out / "log_history.json").write_text(json.dumps(trainer.state.log_history))


if __name__ == "__main__":
    main(sys.argv[1])
