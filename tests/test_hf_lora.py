"""``ecom_qa_lora``: federated LoRA fine-tuning of a transformers causal LM through peft.

Tiny models built from a config (nothing downloaded): only the adapters are parameters and only
they travel (bytes equal their encoded size), the frozen base is one per process, FFA-LoRA leaves
A bit-identical, tables do not depend on the number of workers, and a bad JSONL row is named.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

import fedray
from fedray.clients.profiles import ProfileModel, _draw
from fedray.compression.floats import Fp16Codec, NoneCodec
from fedray.config import config_from_dict
from fedray.errors import UserError
from fedray.training import flat_params
from fedray.workloads import make_workload
from fedray.workloads.ecommerce import hf_lm, qa_data


def qa_config(tmp_path, name="qa", lora=None, **workload):
    return {
        "seed": 4,
        "rounds": 2,
        "clients_per_round": 3,
        "workload": {
            "name": "ecom_qa_lora",
            "world": {
                "num_platforms": 4,
                "num_products": 30,
                "utterances_per_platform": 12,
                "cache_dir": str(tmp_path / "cache"),
            },
            "model": {
                "config": {
                    "architecture": "llama",
                    "hidden_size": 32,
                    "num_layers": 1,
                    "num_heads": 2,
                },
                "vocab_size": 300,
            },
            "lora": {"r": 2, "alpha": 4, **(lora or {})},
            "max_len": 48,
            "eval_clients": 2,
            "decode_examples": 3,
            "max_new_tokens": 3,
            **workload,
        },
        "clients": {"num_clients": 4},
        "client": {"lr": 0.2, "batch_size": 8, "local_epochs": 1},
        "execution": {"clients_per_task": 2},
        "output": {"root": str(tmp_path / "results"), "name": name},
    }


def task_of(raw):
    cfg = config_from_dict(raw)
    return make_workload(cfg.workload, cfg.seed)


def base_weights(model) -> dict[str, torch.Tensor]:
    return {
        n: p.detach().clone() for n, p in model._base.peft.named_parameters() if "lora_" not in n
    }


def test_parameters_are_the_adapters_and_the_frozen_base_is_shared(tmp_path):
    task = task_of(qa_config(tmp_path))
    a, b = task.build_model(), task.build_model()
    assert a._base is b._base  # one frozen base per process, however many models
    names = [n for n, _ in a.named_parameters()]
    assert names and all("lora_A" in n or "lora_B" in n for n in names)
    # peft's Llama default targets q_proj and v_proj: per layer r·(32+32) for A and B of each
    assert sum(p.numel() for p in a.parameters()) == 2 * 2 * (32 + 32)
    # every model starts from the same seeded A (and B = 0), whatever torch's global RNG says
    torch.manual_seed(123)
    c = task.build_model()
    np.testing.assert_array_equal(flat_params(a), flat_params(c))
    base, before = base_weights(a), flat_params(a)
    data = task.client_data(0)
    stats = task.local_train(
        a, data, epochs=1, lr=0.5, batch_size=8, mu=0.0, rng=np.random.default_rng(0)
    )
    assert stats.steps > 0 and np.isfinite(stats.loss)
    assert not np.array_equal(flat_params(a), before)  # the adapter trained...
    after = base_weights(a)
    assert all(torch.equal(base[n], after[n]) for n in base)  # ...the base did not
    np.testing.assert_array_equal(flat_params(b), before)  # ...nor another model's adapter
    metrics = task.evaluate(a, data.x_test, data.y_test)
    assert {"loss", "accuracy", "perplexity", "exact_match", "token_f1"} <= set(metrics)
    assert metrics["perplexity"] == pytest.approx(np.exp(metrics["loss"]))


def test_answers_alone_carry_the_loss(tmp_path):
    task = task_of(qa_config(tmp_path))
    tokens = task.tokens
    x, y = hf_lm.encode_examples(tokens, ["Question: who ?\n"], ["Ardix ."], 32)
    labelled = y[0][y[0] != hf_lm.IGNORE].tolist()
    assert labelled == tokens.encode("Ardix .") + [tokens.eos]
    start = int(np.flatnonzero(y[0] != hf_lm.IGNORE)[0])
    assert tokens.decode(x[0, 1 : start + 1].tolist()) == "Question: who ?\n"
    assert hf_lm.token_f1(["it", "is", "red"], ["it", "is", "blue"]) == pytest.approx(2 / 3)
    assert hf_lm.words("Yes , this listing is Red .") == ["yes", "this", "listing", "is", "red"]


def test_ffa_lora_trains_b_only_and_leaves_a_bit_identical(tmp_path):
    task = task_of(qa_config(tmp_path, lora={"ffa": True}))
    model = task.build_model()
    names = [n for n, _ in model.named_parameters()]
    assert names and all("lora_B" in n for n in names)  # A is not federated: it never travels
    a_before = [t.detach().clone() for t in model.frozen_tensors()]
    assert len(a_before) == len(names)
    for round_ in range(2):  # two "rounds" of local training from the model
        task.local_train(
            model,
            task.client_data(round_),
            epochs=1,
            lr=0.5,
            batch_size=8,
            mu=0.0,
            rng=np.random.default_rng(round_),
        )
    assert np.abs(flat_params(model)).sum() > 0  # B moved away from zero
    assert all(torch.equal(x, y) for x, y in zip(a_before, model.frozen_tensors(), strict=True))
    # another model (another client, another process) holds the very same A
    other = task.build_model()
    assert all(torch.equal(x, y) for x, y in zip(a_before, other.frozen_tensors(), strict=True))


def test_only_adapters_travel_and_tables_match_on_one_and_two_workers(ray_session, tmp_path):
    runs = []
    for workers in (1, 2):
        raw = qa_config(tmp_path, f"w{workers}")
        raw["execution"]["num_workers"] = workers
        runs.append(fedray.run(config_from_dict(raw), progress=False))
    one, two = runs
    cols = [c for c in one.rounds.columns if c != "wall_time_s"]
    pd.testing.assert_frame_equal(one.rounds[cols], two.rounds[cols], check_exact=True)
    pd.testing.assert_frame_equal(one.clients, two.clients, check_exact=True)
    n = 2 * 2 * (32 + 32)  # the adapters' values: the whole federated vector
    size = len(NoneCodec().encode(np.zeros(n, np.float32), (n,)))
    assert size == 1 + 4 * n
    done = one.clients[one.clients["status"] == "completed"]
    assert len(done) and (done["bytes_up"] == size).all() and (done["bytes_down"] == size).all()
    for name in ("eval_perplexity", "eval_exact_match", "eval_token_f1"):
        assert one.rounds[name].notna().all()
    # forward + backward FLOPs of one example, measured once (torch.utils.flop_counter)
    flops = json.loads((one.path / "summary.json").read_text())["train_flops_per_sample"]
    forward_matmuls = 2 * 48 * (32 * 32 * 4 + 3 * 32 * 128 + 32 * 300)  # 1 layer + head, 48 tokens
    assert forward_matmuls < flops < 4 * forward_matmuls

    # FFA-LoRA with an fp16 uplink: B alone, at 2 bytes a value
    # (its devices' compute given in FLOP/s: the cost model divides by the measured FLOPs)
    raw = qa_config(tmp_path, "ffa", lora={"ffa": True})
    raw["compression"] = {"uplink": "fp16"}
    raw["clients"]["profile"] = {"flops": {"dist": "lognormal", "median": 2e9, "sigma": 0.5}}
    ffa = fedray.run(config_from_dict(raw), progress=False)
    done = ffa.clients[ffa.clients["status"] == "completed"]
    half = len(Fp16Codec().encode(np.zeros(n // 2, np.float32), (n // 2,)))
    assert len(done) and (done["bytes_up"] == half).all()
    per_sample = json.loads((ffa.path / "summary.json").read_text())["train_flops_per_sample"]
    profiles = ProfileModel(config_from_dict(raw).clients.profile, raw["seed"])
    device_flops = _draw(profiles.cfg.flops, raw["seed"], "flops", done["client_id"].to_numpy())
    expected = done["num_samples"] * done["local_epochs"] * per_sample / device_flops
    np.testing.assert_allclose(done["compute_s"], expected, rtol=1e-12)


def write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")


def test_alpaca_jsonl_loader_and_the_line_a_bad_row_is_on(tmp_path):
    good = [
        {"instruction": "Name the colour.", "input": f"A {c} bag", "output": c, "client": k % 2}
        for k, c in enumerate(["red", "blue", "green", "black", "white", "grey"] * 2)
    ]
    path = tmp_path / "silos.jsonl"
    write_jsonl(path, good)
    data = qa_data.read_jsonl(path)
    assert len(data) == 12 and data.groups["platform"].tolist() == [0, 1] * 6
    assert data.prompts[0].endswith("### Input:\nA red bag\n\n### Response:\n")

    raw = qa_config(tmp_path, source=str(path), partition="natural")
    raw["clients"]["num_clients"], raw["clients_per_round"] = 2, 2
    task = task_of(raw)
    assert task.num_train_samples(np.arange(2)).sum() + sum(len(t) for t in task.test_idx) == 12
    raw["clients"]["num_clients"] = 3
    with pytest.raises(UserError, match="names 2 clients but clients.num_clients=3"):
        task_of(raw)

    bad = [*good[:2], '{"instruction": "x", "output": ', *good[2:]]
    write_jsonl(path, bad)
    with pytest.raises(UserError, match=r"silos.jsonl: line 3: not valid JSON") as err:
        qa_data.read_jsonl(path)
    assert "\n" not in str(err.value)
    write_jsonl(path, [*good[:4], {"instruction": "x", "output": ""}])
    with pytest.raises(UserError, match=r"line 5: 'output' must be a non-empty string"):
        qa_data.read_jsonl(path)
    write_jsonl(path, [*good[:3], {"instruction": "x", "output": "y"}])
    with pytest.raises(UserError, match=r"line 4 has no client unlike line 1"):
        qa_data.read_jsonl(path)


def test_a_local_gpt2_directory_is_a_base(tmp_path):
    """``model.path``: a save_pretrained GPT-2 (Conv1D layers) and its tokenizer, offline."""
    from transformers import AutoModelForCausalLM, GPT2Config, PreTrainedTokenizerFast

    raw = qa_config(tmp_path)
    task = task_of(raw)
    tok = hf_lm.Tokens.trained(task.corpus.prompts + task.corpus.answers, 300)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok.backend, eos_token="</s>", pad_token="<pad>"
    )
    model = AutoModelForCausalLM.from_config(
        GPT2Config(vocab_size=tok.size, n_embd=32, n_layer=1, n_head=2, n_positions=128)
    )
    directory = tmp_path / "gpt2-local"
    model.save_pretrained(directory)
    fast.save_pretrained(directory)
    raw["workload"]["model"] = {"path": str(directory)}
    raw["workload"]["lora"] = {"r": 2, "alpha": 4, "target_modules": ["c_attn"]}
    task = task_of(raw)
    lm = task.build_model()
    assert sum(p.numel() for p in lm.parameters()) == 2 * (32 + 3 * 32)  # r·(in + out), 1 layer
    before = flat_params(lm)
    task.local_train(
        lm,
        task.client_data(0),
        epochs=1,
        lr=0.5,
        batch_size=8,
        mu=0.0,
        rng=np.random.default_rng(0),
    )
    assert not np.array_equal(before, flat_params(lm))
    raw["workload"]["model"] = {"path": str(tmp_path / "missing")}
    with pytest.raises(UserError, match="holds no readable tokenizer"):
        task_of(raw)


def test_the_bpe_tokenizer_is_the_same_in_another_process(tmp_path):
    """Every actor trains its own tokenizer from the same text: it must get the same merges."""
    import os
    import subprocess
    import sys

    texts = [f"Is it available in {c} ? Yes , this listing is {c} ." for c in ("red", "navy")] * 20
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    script = (
        "import json, sys; from fedray.workloads.ecommerce.hf_lm import Tokens; "
        "t = Tokens.trained(json.load(open(sys.argv[1])), 300); "
        "print(json.dumps(t.backend.get_vocab(), sort_keys=True))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "texts.json")],
        capture_output=True, text=True, check=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "true"},
    )  # fmt: skip
    here = hf_lm.Tokens.trained(texts, 300).backend.get_vocab()
    assert json.loads(out.stdout) == here


def test_devices_that_cannot_hold_the_training_footprint_are_never_selected(ray_session, tmp_path):
    # Prepare: the footprint grows with the batch (activations) and exceeds the weights
    raw = qa_config(tmp_path, "memory")
    workload = make_workload(config_from_dict(raw).workload, raw["seed"])
    small, large = workload.train_memory_bytes(2), workload.train_memory_bytes(8)
    model = workload.build_model()
    adapter = sum(p.numel() * 4 for p in model.parameters())
    assert 2 * adapter < small < large
    # phones with 1 kB can hold nothing; desktops with 1 GB everything
    raw.update(rounds=3, clients_per_round=2)
    raw["clients"] = {
        "num_clients": 4,
        "profile": {
            "tiers": [
                {"name": "phone", "weight": 1, "memory_gb": 1e-6},
                {"name": "desktop", "weight": 1, "memory_gb": 1.0},
            ]
        },
    }

    # Execute
    result = fedray.run(config_from_dict(raw), progress=False)

    # Assert: only desktops ever train; the summary counts the phones it ruled out
    profiles = ProfileModel(config_from_dict(raw).clients.profile, raw["seed"])
    phones = set(np.flatnonzero(profiles.tier_of(np.arange(4)) == 0))
    assert 0 < len(phones) < 4
    assert not phones & set(result.clients["client_id"])
    summary = json.loads((result.path / "summary.json").read_text())
    assert summary["ineligible_clients"] == len(phones)
    assert summary["train_memory_bytes"] == workload.train_memory_bytes(8)  # batch_size 8
    # the tokenizer trained on the federation's text is saved beside the tables, reloadable
    from tokenizers import Tokenizer

    assert summary["artifacts"] == ["tokenizer.json"]
    saved = Tokenizer.from_file(str(result.path / "tokenizer.json"))
    assert saved.get_vocab() == workload.tokens.backend.get_vocab()

    # nobody fits: one line, before any round
    raw["clients"]["profile"] = {"memory_gb": 1e-6}
    raw["output"]["name"] = "none-fits"
    with pytest.raises(UserError, match="no client's memory_gb holds the workload's training"):
        fedray.run(config_from_dict(raw), progress=False)
