"""A seeded multi-platform e-commerce world: catalogue, platforms, users, text and a knowledge graph.

Everything is a pure function of :class:`WorldParams` (the seed included); nothing is downloaded.
The generative story, top-down:

1. Brands get a country and a *category affinity* θ_b ~ Dir(0.3·1) over the top categories, so
   most brands concentrate on one or two departments.
2. Products pick a leaf type uniformly, a brand with probability ∝ θ_b[top], then a colour, a
   size from the type's size system, a material from the type's materials, a model code
   (brand prefix + digits) and a price (base · lognormal(0, 0.4)) cut into three price bands.
3. Each platform has its own category mix π_p ~ Dir(1·1) (non-IID silos), lists each product with
   probability ∝ π_p[top] (so products overlap across platforms), spreads its listings over
   ``shops_per_platform`` shops, and has its own title convention (field order, separator,
   fillers, how often it abbreviates or mistypes attribute words) and its own mix of
   customer-service intents ρ_p ~ Dir(0.7·1).
4. Users belong to a platform and have a latent preference over leaf types ~ Dir(0.3·1) and a
   price sensitivity; they view and buy listings of their platform in time order.
5. Text comes from templates: titles with gold BIO tags, descriptions, QA pairs, customer-service
   utterances with their intent, and one sentence per KG triple stating its relation (plus
   ``none`` sentences pairing unrelated entities).

Worlds are cached under ``cache_dir`` keyed by a hash of the parameters; writes go to a temporary
file first and are published with ``os.replace``, so concurrent workers never read a torn file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedray import seeding
from fedray.workloads.ecommerce import lexicon as lx
from fedray.workloads.ecommerce.text import tokenize

GENERATOR_VERSION = 3  # bump when the generative story changes, so stale caches are not reused
TAGS = ("BRAND", "TYPE", "COLOR", "SIZE", "MATERIAL", "MODEL")


@dataclass(frozen=True)
class WorldParams:
    seed: int = 0
    num_platforms: int = 4
    shops_per_platform: int = 5
    num_brands: int = 30
    num_products: int = 400
    num_users: int = 200
    interactions_per_user: int = 10
    utterances_per_platform: int = 500

    def key(self) -> str:
        text = json.dumps({**dataclasses.asdict(self), "v": GENERATOR_VERSION}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Product:
    id: str
    top: str
    type: str
    brand: str
    color: str
    size: str
    material: str
    model: str
    price: float
    band: str


@dataclass
class World:
    """The generated world. Lists are aligned by index (``listings[i]`` has ``titles[i]``)."""

    params: WorldParams
    leaf_types: list[str]
    brands: list[dict]
    products: list[Product]
    platforms: list[dict]
    listings: list[tuple[int, int, int]]  # (platform, shop, product index)
    titles: list[list[tuple[str, str]]]  # per listing: (token, BIO tag)
    descriptions: list[str]
    qa: list[tuple[int, str, str]]  # (listing, question, answer)
    utterances: list[tuple[int, int, str, str]]  # (platform, shop, text, intent)
    relation_sentences: list[tuple[int, int, str, str]]  # (platform, shop, marked text, relation)
    triples: list[tuple[str, str, str]]
    interactions: dict[str, np.ndarray] = field(default_factory=dict)  # user, listing, t, kind


# ----------------------------------------------------------------------------- generation


def generate(params: WorldParams) -> World:
    rng = seeding.generator(params.seed, "ecom.world")
    tops = list(lx.CATEGORIES)
    leaf_types = [t for top in tops for t in lx.CATEGORIES[top]]
    top_of = {t: top for top in tops for t in lx.CATEGORIES[top]}

    brands = _brands(rng, params.num_brands, len(tops))
    affinity = np.array([b["affinity"] for b in brands])  # [brands, tops]
    products = []
    for i in range(params.num_products):
        leaf = leaf_types[rng.integers(len(leaf_types))]
        top = top_of[leaf]
        sizes, materials, base = lx.CATEGORIES[top][leaf]
        w = affinity[:, tops.index(top)]
        brand = brands[rng.choice(len(brands), p=w / w.sum())]
        price = float(base * np.exp(rng.normal(0.0, 0.4)))
        band = lx.PRICE_BANDS[int(np.digitize(price / base, [0.8, 1.25]))]
        model = f"{brand['prefix']}-{rng.integers(100, 10000)}" + (
            "" if rng.random() < 0.5 else "ABCXZ"[rng.integers(5)]
        )
        products.append(
            Product(
                id=f"P{i:05d}",
                top=top,
                type=leaf,
                brand=brand["name"],
                color=lx.COLORS[rng.integers(len(lx.COLORS))],
                size=sizes[rng.integers(len(sizes))],
                material=materials[rng.integers(len(materials))],
                model=model,
                price=round(price, 2),
                band=band,
            )
        )

    platforms = [
        _platform(rng, lx.PLATFORM_NAMES[p], len(tops)) for p in range(params.num_platforms)
    ]
    listings = []
    for p, plat in enumerate(platforms):
        # each shop specialises too; a listing goes to a shop ∝ the shop's mix over tops
        shop_mix = rng.dirichlet(np.ones(len(tops)), params.shops_per_platform)
        listing_prob = 0.9 * plat["category_mix"] / plat["category_mix"].max()
        for j, prod in enumerate(products):
            t = tops.index(prod.top)
            if rng.random() < listing_prob[t]:
                shop = rng.choice(
                    params.shops_per_platform, p=shop_mix[:, t] / shop_mix[:, t].sum()
                )
                listings.append((p, int(shop), j))

    titles = [_title(rng, platforms[p], products[j]) for p, _, j in listings]
    descriptions = [_description(rng, products[j]) for _, _, j in listings]
    qa = [q for i, (_, _, j) in enumerate(listings) for q in _qa(rng, i, products[j])]
    triples = _triples(rng, brands, products, leaf_types)
    utterances = _utterances(rng, params, platforms, products)
    relation_sentences = _relation_sentences(rng, params, platforms, triples, listings, products)
    interactions = _interactions(rng, params, listings, products, leaf_types)
    return World(
        params=params,
        leaf_types=leaf_types,
        brands=brands,
        products=products,
        platforms=platforms,
        listings=listings,
        titles=titles,
        descriptions=descriptions,
        qa=qa,
        utterances=utterances,
        relation_sentences=relation_sentences,
        triples=triples,
        interactions=interactions,
    )


def _brands(rng, n: int, num_tops: int) -> list[dict]:
    names: list[str] = []
    while len(names) < n:
        name = (
            lx.BRAND_ONSETS[rng.integers(len(lx.BRAND_ONSETS))]
            + lx.BRAND_CODAS[rng.integers(len(lx.BRAND_CODAS))]
        )
        if name in names:  # a name collision would merge two brands' entities
            name += lx.BRAND_CODAS[rng.integers(len(lx.BRAND_CODAS))]
            if name in names:
                continue
        names.append(name)
    return [
        {
            "name": name,
            "prefix": name[:2].upper(),
            "country": lx.COUNTRIES[rng.integers(len(lx.COUNTRIES))],
            "affinity": rng.dirichlet(np.full(num_tops, 0.3)) + 1e-3,
        }
        for name in names
    ]


def _platform(rng, name: str, num_tops: int) -> dict:
    order = list(rng.permutation(["BRAND", "TYPE", "COLOR", "SIZE", "MATERIAL", "MODEL"]))
    if rng.random() < 0.6:  # most marketplaces lead with the brand
        order.remove("BRAND")
        order.insert(0, "BRAND")
    return {
        "name": name,
        "category_mix": rng.dirichlet(np.ones(num_tops)),
        "intent_mix": rng.dirichlet(np.full(len(lx.INTENTS), 0.7)),
        "title_order": order,
        "separator": [" ", " - ", " | ", " , ", " / "][rng.integers(5)],
        "size_prefix": ["", "Size ", "Gr. ", ""][rng.integers(4)],
        "fillers": list(rng.choice(lx.TITLE_FILLERS, size=2, replace=False)),
        "drop_prob": float(rng.uniform(0.0, 0.3)),
        # how often this platform's sellers abbreviate (lexicon.ABBREVIATIONS) or mistype a word
        "abbrev_prob": float(rng.uniform(0.0, 0.6)),
        "typo_prob": float(rng.uniform(0.0, 0.04)),
        # each platform phrases its customers' messages with its own subset of templates
        "template_keep": float(rng.uniform(0.6, 0.9)),
    }


def _title(rng, plat: dict, prod: Product) -> list[tuple[str, str]]:
    values = {
        "BRAND": prod.brand,
        "TYPE": prod.type,
        "COLOR": prod.color,
        "SIZE": prod.size,
        "MATERIAL": prod.material,
        "MODEL": prod.model,
    }
    out: list[tuple[str, str]] = []
    if rng.random() < 0.3:
        out += [(w, "O") for w in tokenize(plat["fillers"][rng.integers(2)])]
    for i, tag in enumerate(plat["title_order"]):
        if tag not in ("BRAND", "TYPE") and rng.random() < plat["drop_prob"]:
            continue
        if i and out:
            out += [(w, "O") for w in tokenize(plat["separator"])]
        if tag == "SIZE" and plat["size_prefix"]:
            out += [(w, "O") for w in tokenize(plat["size_prefix"])]
        value = values[tag]
        if value in lx.ABBREVIATIONS and rng.random() < plat["abbrev_prob"]:
            value = lx.ABBREVIATIONS[value]
        words = [_typo(rng, w) if rng.random() < plat["typo_prob"] else w for w in tokenize(value)]
        out += [(w, ("B-" if k == 0 else "I-") + tag) for k, w in enumerate(words)]
    return out


def _typo(rng, word: str) -> str:
    """Swap two adjacent characters, the commonest typing error (Damerau 1964)."""
    if len(word) < 3:
        return word
    i = int(rng.integers(len(word) - 1))
    return word[:i] + word[i + 1] + word[i] + word[i + 2 :]


def _description(rng, prod: Product) -> str:
    sentences = [
        f"This {prod.color} {prod.type} by {prod.brand} is made of {prod.material} .",
        f"Model {prod.model} , size {prod.size} , a {prod.band} choice at {prod.price:.2f} EUR .",
        f"A {prod.type} for everyday use .",
    ]
    order = rng.permutation(len(sentences))
    return " ".join(sentences[i] for i in order)


def _qa(rng, listing: int, prod: Product) -> list[tuple[int, str, str]]:
    pool = [
        (f"What material is the {prod.type} ?", f"It is made of {prod.material} ."),
        (f"Which size is this {prod.type} ?", f"This one is size {prod.size} ."),
        ("Who makes it ?", f"It is a {prod.brand} product , model {prod.model} ."),
        (f"Is it available in {prod.color} ?", f"Yes , this listing is {prod.color} ."),
    ]
    picks = rng.choice(len(pool), size=2, replace=False)
    return [(listing, *pool[i]) for i in picks]


def _triples(rng, brands, products, leaf_types) -> list[tuple[str, str, str]]:
    triples = []
    by_type: dict[str, list[Product]] = {t: [] for t in leaf_types}
    for p in products:
        by_type[p.type].append(p)
        name = f"{p.brand} {p.type} {p.model}"
        triples += [
            (name, "hasBrand", p.brand),
            (name, "inCategory", p.top),
            (name, "hasColor", p.color),
            (name, "madeOf", p.material),
        ]
    for source, target in lx.COMPATIBLE:
        targets = by_type[target]
        for p in by_type[source]:
            if targets:
                q = targets[rng.integers(len(targets))]
                if q is not p:
                    triples.append(
                        (
                            f"{p.brand} {p.type} {p.model}",
                            "compatibleWith",
                            f"{q.brand} {q.type} {q.model}",
                        )
                    )
    triples += [(b["name"], "originCountry", b["country"]) for b in brands]
    return triples


def _fill(rng, template: str, products: list[Product]) -> str:
    prod = products[rng.integers(len(products))]
    return template.format(
        type=prod.type,
        brand=prod.brand,
        order=f"#{rng.integers(100000, 999999)}",
        size=prod.size,
        color=prod.color,
        days=int(rng.integers(2, 30)),
    )


def _kept_templates(rng, templates: tuple[str, ...], keep: float) -> list[str]:
    kept = [t for t in templates if rng.random() < keep]
    return kept or [templates[rng.integers(len(templates))]]


def _utterances(rng, params, platforms, products) -> list[tuple[int, int, str, str]]:
    intents = list(lx.INTENTS)
    out = []
    for p, plat in enumerate(platforms):
        templates = {i: _kept_templates(rng, lx.INTENTS[i], plat["template_keep"]) for i in intents}
        for _ in range(params.utterances_per_platform):
            intent = intents[rng.choice(len(intents), p=plat["intent_mix"])]
            pool = templates[intent]
            text = _fill(rng, pool[rng.integers(len(pool))], products)
            out.append((p, int(rng.integers(params.shops_per_platform)), text, intent))
    return out


def _relation_sentences(rng, params, platforms, triples, listings, products):
    """One sentence per triple on a platform that lists the head product (brands: any platform),
    plus as many ``none`` sentences as the average relation has."""
    platforms_of: dict[str, list[tuple[int, int]]] = {}
    for p, s, j in listings:
        prod = products[j]
        platforms_of.setdefault(f"{prod.brand} {prod.type} {prod.model}", []).append((p, s))
    relations = [r for r in lx.RELATIONS if r != "none"]
    templates = [
        {
            r: _kept_templates(rng, lx.RELATIONS[r], plat["template_keep"]) + list(lx.AMBIGUOUS)
            for r in lx.RELATIONS
        }
        for plat in platforms
    ]
    out = []

    def emit(p, s, head, rel, tail):
        pool = templates[p][rel]
        text = pool[rng.integers(len(pool))].format(h=f"[E1] {head} [/E1]", t=f"[E2] {tail} [/E2]")
        out.append((p, s, text, rel))

    def place(head):
        where = platforms_of.get(head)
        if where:
            return where[rng.integers(len(where))]
        return int(rng.integers(params.num_platforms)), int(rng.integers(params.shops_per_platform))

    for head, rel, tail in triples:
        if rel in ("hasColor", "madeOf", "inCategory", "hasBrand") and rng.random() < 0.5:
            continue  # these four outnumber the rest; thin them so the classes stay comparable
        # brands are few (one originCountry triple each): state each one in three sentences
        for _ in range(3 if rel == "originCountry" else 1):
            emit(*place(head), head, rel, tail)
    num_none = len(out) // len(relations)
    for _ in range(num_none):
        h, _, _ = triples[rng.integers(len(triples))]
        _, _, t = triples[rng.integers(len(triples))]
        emit(*place(h), h, "none", t)
    return out


def _interactions(rng, params, listings, products, leaf_types) -> dict[str, np.ndarray]:
    by_platform: dict[int, list[int]] = {}
    for i, (p, _, _) in enumerate(listings):
        by_platform.setdefault(p, []).append(i)
    leaf_index = {t: k for k, t in enumerate(leaf_types)}
    users, items, times, kinds = [], [], [], []
    for u in range(params.num_users):
        p = int(rng.integers(params.num_platforms))
        pool = np.array(by_platform.get(p, []))
        if not len(pool):
            continue
        pref = rng.dirichlet(np.full(len(leaf_types), 0.3))
        w = pref[[leaf_index[products[listings[i][2]].type] for i in pool]] + 1e-6
        sensitivity = rng.uniform(0.0, 1.0)  # how much a premium price band deters buying
        picks = rng.choice(pool, size=params.interactions_per_user, p=w / w.sum())
        t = np.sort(rng.uniform(0.0, 90.0, size=len(picks)))  # days since the world began
        for i, ti in zip(picks, t, strict=True):
            band = lx.PRICE_BANDS.index(products[listings[i][2]].band)
            buy = rng.random() < 0.3 * (1.0 - sensitivity * band / 2)
            users.append(u), items.append(int(i)), times.append(ti), kinds.append(int(buy))
    return {
        "user": np.array(users, np.int64),
        "listing": np.array(items, np.int64),
        "t_days": np.array(times, np.float64),
        "purchase": np.array(kinds, np.int8),
    }


# ----------------------------------------------------------------------------- cache


def load_or_generate(params: WorldParams, cache_dir: Path | None) -> World:
    """The world for ``params``, from ``cache_dir`` if it holds it, else generated (and cached)."""
    if cache_dir is None:
        return generate(params)
    path = Path(cache_dir) / f"ecom-world-{params.key()}.pkl"
    try:
        with open(path, "rb") as f:
            world = pickle.load(f)
        if world.params == params:
            return world
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError):
        pass  # missing or unreadable: regenerate; the world is a pure function of params
    world = generate(params)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # a private temporary name per writer: concurrent workers never see a half-written file
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            pickle.dump(world, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
    except OSError:
        # a read-only or full cache is a missed optimisation, not an error
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return world
