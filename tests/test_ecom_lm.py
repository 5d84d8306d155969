"""``ecom_lm``: the tiny transformer learns past a unigram model, and with LoRA only the adapters
are parameters — they alone train, travel and are counted in bytes."""

from __future__ import annotations

import numpy as np
import torch

import fedray
from fedray.config import config_from_dict
from fedray.sim.evaluation import Evaluator
from fedray.training import flat_params
from fedray.workloads import ClientData, make_workload
from fedray.workloads.ecommerce.lm import unigram_perplexity


def lm_config(tmp_path, **workload):
    return {
        "seed": 2,
        "rounds": 4,
        "clients_per_round": 4,
        "workload": {
            "name": "ecom_lm",
            "world": {"num_products": 100, "cache_dir": str(tmp_path / "cache")},
            "partition": "iid",
            "embed_dim": 64,
            "hidden": 128,
            "max_len": 24,
            "eval_clients": 2,
            **workload,
        },
        "clients": {"num_clients": 8},
        "client": {"lr": 0.3, "batch_size": 16, "local_epochs": 2},
        "execution": {"clients_per_task": 2},
        "output": {"root": str(tmp_path / "results"), "name": f"lm{workload.get('lora_rank')}"},
    }


def test_lora_parameters_are_the_adapters_and_the_frozen_base_is_seeded(tmp_path):
    task = make_workload(config_from_dict(lm_config(tmp_path, lora_rank=4)).workload, 2)
    torch.manual_seed(0)
    a = task.build_model()
    torch.manual_seed(1)  # the global RNG must not change the frozen base
    b = task.build_model()
    names = [n for n, _ in a.named_parameters()]
    assert names and all(n.split(".")[-1] in ("lora_a", "lora_b") for n in names)
    for (name, x), (_, y) in zip(a.named_buffers(), b.named_buffers(), strict=True):
        assert torch.equal(x, y), name
    # 2 layers × 4 adapted maps (qkv, proj, ff1, ff2), each r·(in + out) values
    d, ff, r = 64, 128, 4
    expected = 2 * r * ((d + 3 * d) + (d + d) + (d + ff) + (ff + d))
    assert sum(p.numel() for p in a.parameters()) == expected
    base = {n: t.clone() for n, t in a.named_buffers()}
    before = flat_params(a)
    full = task.client_data(0)
    data = ClientData(full.x_train[:32], full.y_train[:32], full.x_test, full.y_test)
    task.local_train(a, data, epochs=1, lr=0.3, batch_size=16, mu=0.0, rng=np.random.default_rng(0))
    assert not np.allclose(flat_params(a), before)  # adapters trained...
    assert all(torch.equal(base[n], t) for n, t in a.named_buffers())  # ...the base did not


def test_lm_beats_a_unigram_model_and_lora_uploads_only_adapters(ray_session, tmp_path):
    full_cfg = config_from_dict(lm_config(tmp_path))
    full = fedray.run(full_cfg, progress=False)
    task = make_workload(full_cfg.workload, 2)
    evaluated = [task.client_data(int(c)) for c in range(8)]
    unigram = unigram_perplexity(
        torch.cat([d.y_train for d in evaluated]).numpy(),
        torch.cat([d.y_test for d in evaluated]).numpy(),
        len(task.vocab),
    )
    ppl = full.rounds["eval_perplexity"]
    assert ppl.iloc[-1] < 0.5 * unigram and ppl.iloc[-1] < ppl.iloc[0]

    # LoRA fine-tuning of a base pre-trained on the public world
    raw = lm_config(tmp_path, lora_rank=4, pretrain_steps=30)
    raw["rounds"] = 3
    lora_cfg = config_from_dict(raw)
    lora_task = make_workload(lora_cfg.workload, 2)  # pre-trains once; the run's actors load it
    evaluator = Evaluator(lora_task, 2, 8, lora_cfg.workload.eval_clients)
    base_ppl = evaluator(flat_params(lora_task.build_model()))["eval_perplexity"]  # B = 0: the base
    lora = fedray.run(lora_cfg, progress=False)
    assert base_ppl < unigram  # pre-training on other (public) text already transfers
    assert lora.rounds["eval_perplexity"].iloc[-1] < base_ppl  # and the adapters improve on it
    n_full = sum(p.numel() for p in task.build_model().parameters())
    n_lora = sum(p.numel() for p in lora_task.build_model().parameters())
    done = lambda r: r.clients[r.clients.status == "completed"]  # noqa: E731
    assert (done(full)["bytes_up"] == 1 + 4 * n_full).all()  # codec none: 1-byte id + float32s
    assert (done(lora)["bytes_up"] == 1 + 4 * n_lora).all()
    assert (done(lora)["bytes_down"] == 1 + 4 * n_lora).all()
    assert n_full > 10 * n_lora


def test_pretrained_base_is_cached_and_shared_by_every_process(tmp_path, monkeypatch):
    cfg = config_from_dict(lm_config(tmp_path, lora_rank=2, pretrain_steps=5)).workload
    first = make_workload(cfg, 2).build_model()
    import fedray.workloads.ecommerce.pretrain as pretrain

    def no_training(*args):
        raise AssertionError("a cached base must not be trained again")

    monkeypatch.setattr(pretrain, "_train", no_training)
    again = make_workload(cfg, 2).build_model()  # as a pool actor builds it: from the cache
    for (name, x), (_, y) in zip(first.named_buffers(), again.named_buffers(), strict=True):
        assert torch.equal(x, y), name
    random_base = make_workload(config_from_dict(lm_config(tmp_path, lora_rank=2)).workload, 2)
    assert not torch.equal(random_base.build_model().tok, first.tok)
