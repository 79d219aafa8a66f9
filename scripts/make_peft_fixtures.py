"""Generate the committed PEFT adapters on the tiny MPNet, DistilBERT and ModernBERT fixtures with PEFT itself.

Run once, in an environment that has torch and peft (never a test or runtime dependency):

    /tmp/peer/bin/python scripts/make_peft_fixtures.py

(torch 2.x, transformers 5.24, peft.) It loads tests/fixtures/{mpnet,distilbert,modernbert}_tiny
with transformers, puts a LoRA adapter on it under those checkpoints' own layer names (MPNet's
``attention.attn.q``, DistilBERT's ``attention.q_lin`` and ``ffn.lin2`` with a rank and alpha
pattern, ModernBERT's fused ``attn.Wqkv`` as one module and ``mlp.Wi``), draws random B so the adapter changes the states, and writes
tests/fixtures/peft_<name>_lora/ (PEFT's save_pretrained) and ``peft_<name>_lora_expected.npz``
(the token ids and mask of the base fixture's golden file, PEFT's last hidden states).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from transformers import DistilBertModel, ModernBertModel, MPNetModel

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
ADAPTERS = {
    "mpnet": (MPNetModel, dict(r=4, lora_alpha=8, target_modules=["q", "v", "o"])),
    "distilbert": (DistilBertModel, dict(r=4, lora_alpha=8, target_modules=["q_lin", "v_lin", "lin2"],
                                         rank_pattern={"lin2": 2}, alpha_pattern={"lin2": 3})),
    "modernbert": (ModernBertModel, dict(r=4, lora_alpha=8, target_modules=["Wqkv", "Wi"],
                                         rank_pattern={"Wi": 2}, alpha_pattern={"Wi": 3})),
}


def main() -> None:
    for name, (cls, lora) in ADAPTERS.items():
        model = cls.from_pretrained(str(OUT / f"{name}_tiny")).eval()
        torch.manual_seed(0)  # PEFT draws A from torch's global generator: the same files on every run
        peft_model = get_peft_model(model, LoraConfig(lora_dropout=0.0, **lora)).eval()
        g = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for param_name, p in peft_model.named_parameters():
                if "lora_B" in param_name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        folder = OUT / f"peft_{name}_lora"
        shutil.rmtree(folder, ignore_errors=True)
        peft_model.save_pretrained(str(folder))
        (folder / "README.md").unlink(missing_ok=True)  # PEFT's model card: not needed
        config = json.loads((folder / "adapter_config.json").read_text())  # no machine path in the fixture
        config["base_model_name_or_path"] = f"tests/fixtures/{name}_tiny"
        config["target_modules"] = sorted(config["target_modules"])  # PEFT keeps a set: its order varies
        (folder / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        golden = np.load(OUT / f"{name}_tiny_expected.npz")
        batch = {k: torch.tensor(golden[k], dtype=torch.long) for k in ("input_ids", "attention_mask")}
        with torch.no_grad():
            out = peft_model(**batch).last_hidden_state.numpy().astype(np.float32)
        np.savez_compressed(OUT / f"peft_{name}_lora_expected.npz", input_ids=golden["input_ids"],
                            attention_mask=golden["attention_mask"], last_hidden_state=out)
        print(name, sorted(p.name for p in folder.iterdir()), float(np.abs(out - golden["last_hidden_state"]).max()))


if __name__ == "__main__":
    main()
