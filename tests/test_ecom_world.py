"""The seeded e-commerce world: determinism, structure, and the parameter-keyed cache."""

from __future__ import annotations

import dataclasses

import numpy as np

from fedray.workloads.ecommerce import lexicon as lx
from fedray.workloads.ecommerce.world import TAGS, WorldParams, generate, load_or_generate

SMALL = WorldParams(seed=5, num_products=120, num_users=30, utterances_per_platform=60)


def plain(value):
    """The world as nested lists/tuples/dicts of Python scalars, comparable with ==."""
    if isinstance(value, np.ndarray):
        return (str(value.dtype), value.tolist())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def test_same_seed_same_world_other_seed_other_world():
    a, b = generate(SMALL), generate(SMALL)
    assert plain(a) == plain(b)
    c = generate(dataclasses.replace(SMALL, seed=6))
    assert [p.brand for p in c.products] != [p.brand for p in a.products]
    assert c.utterances != a.utterances


def test_world_structure_overlaps_platforms_and_tags_titles():
    w = generate(SMALL)
    # products overlap across platforms: the same product is listed by several silos
    platforms_per_product = {}
    for p, _, j in w.listings:
        platforms_per_product.setdefault(j, set()).add(p)
    assert max(len(s) for s in platforms_per_product.values()) >= 2
    # each platform has its own category mix and title convention
    mixes = np.array([p["category_mix"] for p in w.platforms])
    assert not np.allclose(mixes[0], mixes[1])
    assert len({tuple(p["title_order"]) for p in w.platforms}) > 1
    # titles carry gold BIO tags that spell the product's attributes
    (p, _, j), title = w.listings[0], w.titles[0]
    brand = " ".join(tok for tok, tag in title if tag.endswith("BRAND"))
    assert brand == w.products[j].brand
    assert {tag[2:] for _, tag in title if tag != "O"} <= set(TAGS)
    # KG triples cover every relation, every utterance has a known intent
    assert {r for _, r, _ in w.triples} == {r for r in lx.RELATIONS if r != "none"}
    assert {i for *_, i in w.utterances} <= set(lx.INTENTS)
    assert len(w.qa) == 2 * len(w.listings) and len(w.descriptions) == len(w.listings)
    assert w.interactions["user"].max() < SMALL.num_users


def test_cache_hit_returns_the_identical_world_and_writes_atomically(tmp_path, monkeypatch):
    first = load_or_generate(SMALL, tmp_path)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and SMALL.key() in files[0].name  # no temp file left behind
    import fedray.workloads.ecommerce.world as world_module

    def no_generation(params):
        raise AssertionError("a cached world must not be regenerated")

    monkeypatch.setattr(world_module, "generate", no_generation)
    again = load_or_generate(SMALL, tmp_path)
    assert plain(again) == plain(first)


def test_a_corrupt_cache_file_is_regenerated(tmp_path):
    (tmp_path / f"ecom-world-{SMALL.key()}.pkl").write_bytes(b"not a pickle")
    assert plain(load_or_generate(SMALL, tmp_path)) == plain(generate(SMALL))


def test_cache_key_changes_with_every_parameter():
    keys = {SMALL.key()}
    for field in dataclasses.fields(SMALL):
        changed = dataclasses.replace(SMALL, **{field.name: getattr(SMALL, field.name) + 1})
        keys.add(changed.key())
    assert len(keys) == 1 + len(dataclasses.fields(SMALL))
