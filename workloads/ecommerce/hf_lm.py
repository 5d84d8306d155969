"""``ecom_qa_lora``: federated LoRA instruction tuning of a Hugging Face causal LM through ``peft``.

The base model is a ``transformers`` causal LM — a local ``save_pretrained`` directory
(``model.path``: GPT-2, Llama, Qwen, ...) or a randomly initialised model of a named architecture
and size (``model.config``), never a hub download (``HF_HUB_OFFLINE=1``). It is frozen and built
once per process from the run's seed (same bytes in every actor), and every model the engine
asks for (:meth:`EcomQaLora.build_model`) is one more ``peft`` LoRA adapter on that one base
(Hu et al. 2022, "LoRA: Low-Rank Adaptation of Large Language Models"): the engine's flat
parameter vector is the adapter tensors alone, so only they train, travel and are counted in
``bytes_up`` / ``bytes_down``, and codecs, FedProx, FedAdam and FedBuff apply to them unchanged.

With ``lora.ffa`` the run is FFA-LoRA (Sun et al. 2024, "Improving LoRA in Privacy-preserving
Federated Learning", ICLR): every A is frozen at its seeded initialisation — the same bits on
every client and in every round, so it is part of the frozen base, not a federated parameter —
and only B is trained, sent and averaged, which makes the average of the clients' products
B_k·A the product of the averaged B with A (plain FedAvg of A and B is not).

Data are instruction examples (:mod:`.qa_data`): the world's product QA and customer-service
intents per platform, or an Alpaca-style JSONL; the loss covers the answer tokens only. The
tokenizer is the model directory's, or a byte-level BPE trained with ``tokenizers`` on the
clients' train text. Metrics: answer-token cross-entropy and accuracy, perplexity exp(loss),
and — from greedy decoding of the first ``decode_examples`` held-out prompts — exact match and
token F1 (SQuAD's, Rajpurkar et al. 2016) against the reference answers.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from fedray import seeding
from fedray.errors import UserError
from fedray.workloads.ecommerce import pretrain, qa_data
from fedray.workloads.ecommerce.lm import IGNORE, token_scores
from fedray.workloads.ecommerce.task import TextTask, load_world, world_params
from fedray.workloads.ecommerce.world import load_or_generate

TOKENIZER_FILE = "tokenizer.json"  # the locally trained tokenizer, saved beside the run
_EVAL_CHUNK = 64  # examples per forward pass when scoring (logits are [chunk, vocab, length])
_SPECIALS = ("<pad>", "<s>", "</s>")


# ----------------------------------------------------------------------------- tokenizers


class Tokens:
    """The little a workload needs of a tokenizer: ids of text, text of ids, pad/bos/eos ids."""

    def __init__(self, encode, decode, size: int, pad: int, eos: int, bos: int | None, backend):
        self.encode, self.decode = encode, decode
        self.size, self.pad, self.eos, self.bos = size, pad, eos, bos
        self.backend = backend  # the tokenizers.Tokenizer / transformers tokenizer itself

    @classmethod
    def trained(cls, texts: list[str], vocab_size: int) -> Tokens:
        """A byte-level BPE (Sennrich et al. 2016; GPT-2's byte alphabet, so no unknown tokens)
        trained on ``texts``; deterministic, so every process trains the same one."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(_SPECIALS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer)
        pad, bos, eos = (tok.token_to_id(t) for t in _SPECIALS)
        return cls(
            lambda text: tok.encode(text).ids,
            lambda ids: tok.decode(ids),
            tok.get_vocab_size(),
            pad,
            eos,
            bos,
            tok,
        )

    @classmethod
    def from_directory(cls, path: Path) -> Tokens:
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as err:
            raise UserError(
                f"workload.model.path {str(path)!r} holds no readable tokenizer ({_short(err)}); "
                "save one there with tokenizer.save_pretrained"
            ) from None
        if tok.eos_token_id is None:
            raise UserError(
                f"the tokenizer in {str(path)!r} has no eos token; set one and save it again"
            )
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        return cls(
            lambda text: tok(text, add_special_tokens=False)["input_ids"],
            lambda ids: tok.decode(ids, skip_special_tokens=True),
            len(tok),
            pad,
            tok.eos_token_id,
            tok.bos_token_id,
            tok,
        )


def _short(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:160]


def encode_examples(
    tokens: Tokens, prompts: list[str], answers: list[str], max_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """Inputs ``x`` and next-token targets ``y`` ([n, max_len], right-padded): ``y`` is IGNORE
    except on the answer tokens and the closing eos. A long prompt is cut from the left (its
    question is at the end)."""
    n = len(prompts)
    x = np.full((n, max_len), tokens.pad, np.int64)
    y = np.full((n, max_len), IGNORE, np.int64)
    for i, (p, a) in enumerate(zip(prompts, answers, strict=True)):
        # a tokenizer without bos (GPT-2) opens with eos, as GPT-2 separates documents
        head = [tokens.eos if tokens.bos is None else tokens.bos] + tokens.encode(p)
        tail = tokens.encode(a)[: max_len - 1] + [tokens.eos]
        room = max_len + 1 - len(tail)
        ids = head[-room:] + tail
        n_prompt = len(ids) - len(tail)
        x[i, : len(ids) - 1] = ids[:-1]
        y[i, n_prompt - 1 : len(ids) - 1] = ids[n_prompt:]
    return x, y


# ----------------------------------------------------------------------------- the frozen base

_BASES: dict[str, _Base] = {}  # one frozen base per process and configuration


class _Base:
    """A frozen causal LM with ``peft`` LoRA adapters injected; each :class:`LoraLM` owns one."""

    def __init__(self, model, lora_cfg, seed: int):
        self.model, self.lora_cfg, self.seed = model, lora_cfg, seed
        self.peft = None
        self.active: str | None = None
        self.count = 0

    def new_adapter(self) -> str:
        from peft import LoraConfig, get_peft_model

        cfg = self.lora_cfg
        name = f"fedray{self.count}"
        self.count += 1
        config = LoraConfig(
            r=cfg.r,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            target_modules=list(cfg.target_modules) if cfg.target_modules else None,
            bias="none",
            # GPT-2's Conv1D stores weights transposed
            fan_in_fan_out=getattr(self.model.config, "model_type", None) == "gpt2",
        )
        with torch.random.fork_rng(devices=[]):
            if self.peft is None:
                self.peft = get_peft_model(self.model, config, adapter_name=name)
            else:
                self.peft.add_adapter(name, config)
        # A from a generator seeded by the run, not torch's global RNG: every adapter of every
        # process starts from the same A (FFA-LoRA keeps it; plain LoRA's initial model is it)
        gen = torch.Generator().manual_seed(seeding.purpose_code("lora.A") ^ self.seed)
        with torch.no_grad():
            for pname, p in self.peft.named_parameters():
                if f"lora_A.{name}." in pname:
                    torch.nn.init.kaiming_uniform_(p, a=math.sqrt(5), generator=gen)
                elif f"lora_B.{name}." in pname:
                    p.zero_()
        self.active = None
        return name

    def activate(self, adapter: str) -> None:
        if self.active != adapter:
            self.peft.base_model.set_adapter(adapter)
            self.active = adapter


def _base(cfg, tokens: Tokens, seed: int, key: str, pretrained=None) -> _Base:
    base = _BASES.get(key)
    if base is None:
        model = _load_model(cfg.model, tokens, seed)
        if pretrained is not None:
            model.load_state_dict(pretrained())
        base = _BASES[key] = _Base(model, cfg.lora, seed)
    return base


class _Full(torch.nn.Module):
    """A whole causal LM with the ``forward(ids) -> [batch, vocab, length]`` of :class:`LoraLM`,
    for central pre-training (:func:`.pretrain.pretrained_state`)."""

    def __init__(self, model):
        super().__init__()
        self.lm = model.requires_grad_(True)

    def forward(self, ids):
        return self.lm(input_ids=ids).logits.transpose(1, 2)


def _load_model(model_cfg, tokens: Tokens, seed: int):
    """The frozen base: loaded from a local directory, or randomly initialised from the seed
    (under a forked RNG: the global one neither decides it nor is moved by it)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seeding.purpose_code("hf.base") ^ seed)
        if model_cfg.path is not None:
            try:
                model = AutoModelForCausalLM.from_pretrained(
                    model_cfg.path, local_files_only=True, dtype=torch.float32
                )
            except (OSError, ValueError) as err:
                raise UserError(
                    f"workload.model.path {model_cfg.path!r} is not a loadable causal LM "
                    f"directory ({_short(err)}); point it at a save_pretrained folder"
                ) from None
            if model.get_input_embeddings().num_embeddings < tokens.size:
                raise UserError(
                    f"the model in {model_cfg.path!r} embeds fewer tokens than its tokenizer has "
                    f"({tokens.size}); save matching model and tokenizer"
                )
        else:
            model = AutoModelForCausalLM.from_config(_architecture(model_cfg.config, tokens))
    model.requires_grad_(False)
    return model


def _architecture(arch, tokens: Tokens):
    from transformers import GPT2Config, LlamaConfig

    width = arch.intermediate_size or 4 * arch.hidden_size
    common = dict(vocab_size=tokens.size, bos_token_id=tokens.bos, eos_token_id=tokens.eos)
    if arch.architecture == "gpt2":
        return GPT2Config(
            n_embd=arch.hidden_size,
            n_layer=arch.num_layers,
            n_head=arch.num_heads,
            n_inner=width,
            n_positions=4096,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            pad_token_id=tokens.pad,
            **common,
        )
    return LlamaConfig(
        hidden_size=arch.hidden_size,
        num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_heads,
        num_key_value_heads=arch.num_heads,
        intermediate_size=width,
        max_position_embeddings=4096,
        pad_token_id=tokens.pad,
        tie_word_embeddings=False,
        **common,
    )


class LoraLM(torch.nn.Module):
    """One LoRA adapter of the shared frozen base, as the engine sees a model: its parameters
    are the adapter's trainable tensors only (named after the module they adapt), and
    ``forward(ids)`` returns logits ``[batch, vocab, length]`` for the token cross-entropy."""

    def __init__(self, base: _Base, ffa: bool):
        super().__init__()
        adapter = base.new_adapter()
        object.__setattr__(self, "_base", base)  # not a submodule: its weights are not ours
        self.adapter = adapter
        self._frozen: list[torch.nn.Parameter] = []
        for name, p in base.peft.named_parameters():
            if f".{adapter}." not in name:
                continue
            if ffa and ".lora_A." in name:
                self._frozen.append(p)
                continue
            short = name.removeprefix("base_model.model.").replace(f".{adapter}.", ".")
            self.register_parameter(short.replace(".", "_"), p)

    def activate(self) -> None:
        """Make this adapter the base's active one, with only its own tensors trainable."""
        self._base.activate(self.adapter)
        for p in self._frozen:
            p.requires_grad_(False)
        for p in self.parameters():
            p.requires_grad_(True)

    def frozen_tensors(self) -> list[torch.Tensor]:
        """FFA-LoRA's frozen A matrices (empty for plain LoRA)."""
        return list(self._frozen)

    def train(self, mode: bool = True):
        super().train(mode)
        self._base.peft.train(mode)
        return self

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        self.activate()
        return self._base.peft(input_ids=ids).logits.transpose(1, 2)


# ----------------------------------------------------------------------------- the workload


class EcomQaLora(TextTask):
    name = "ecom_qa_lora"
    metric_names = ("perplexity", "exact_match", "token_f1")

    def __init__(self, cfg, seed: int):
        os.environ["HF_HUB_OFFLINE"] = "1"  # never a hub download, whatever the model path says
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.cfg, self.seed = cfg, seed
        if cfg.generated:
            self.corpus = self.from_world(load_world(cfg.world, seed))
        else:
            self.corpus = self.from_file(Path(cfg.source))
            self._check_file_clients()
        self.parts = self._partition()
        self.train_idx, self.test_idx = self._split()
        train_all = np.sort(np.concatenate(self.train_idx))
        if cfg.model.path is not None:
            self.tokens = Tokens.from_directory(Path(cfg.model.path))
        else:
            texts = [self.corpus.prompts[i] + self.corpus.answers[i] for i in train_all]
            self.tokens = Tokens.trained(texts, cfg.model.vocab_size)
        x, y = encode_examples(self.tokens, self.corpus.prompts, self.corpus.answers, cfg.max_len)
        self.x, self.y = torch.from_numpy(x), torch.from_numpy(y)
        self._key = json.dumps(
            [cfg.model.model_dump(mode="json"), cfg.lora.model_dump(mode="json"), seed,
             self.tokens.size, self.tokens.decode(list(range(min(self.tokens.size, 4096))))],
        )  # fmt: skip

    # TextTask's hooks
    def from_world(self, world) -> qa_data.InstructionSet:
        return qa_data.from_world(world, tuple(self.cfg.tasks))

    def from_file(self, path: Path) -> qa_data.InstructionSet:
        return qa_data.read_jsonl(path)

    def targets(self, corpus) -> np.ndarray:  # encode_examples makes inputs and targets together
        raise NotImplementedError

    def _check_file_clients(self) -> None:
        p, n = self.cfg.partition, self.cfg.num_clients
        if p.scheme != "natural":
            return
        groups = self.corpus.groups
        if groups is None:
            raise UserError(
                f"{self.cfg.source}: partition natural needs a client column on every line; "
                "add one or use partition iid, dirichlet or powerlaw"
            )
        found = int(groups["platform"].max()) + 1
        if found != n:
            raise UserError(
                f"{self.cfg.source}: the client column names {found} clients but "
                f"clients.num_clients={n}; set clients.num_clients={found}"
            )

    # ------------------------------------------------------------------ model

    def build_model(self) -> LoraLM:
        pretrained = self._pretrained_state if self.cfg.model.pretrain_steps else None
        base = _base(self.cfg, self.tokens, self.seed, self._key, pretrained)
        return LoraLM(base, self.cfg.lora.ffa)

    def _pretrained_state(self) -> dict[str, torch.Tensor]:
        """The config-built base after ``pretrain_steps`` Adam steps of causal-LM training on a
        public world's titles and descriptions (a second world from a derived seed: same
        lexicon, other brands, products and platform styles; :mod:`.pretrain`), cached."""
        cfg = self.cfg
        params = pretrain.public_world_params(world_params(cfg.world, self.seed))
        world = load_or_generate(params, cfg.world.cache_dir)
        docs = [" ".join(w for w, _ in t) for t in world.titles] + list(world.descriptions)
        x, y = encode_examples(self.tokens, [""] * len(docs), docs, cfg.max_len)
        seed = seeding.purpose_code("hf.base") ^ self.seed
        key = {"world": params.key(), "base": self._key, "steps": cfg.model.pretrain_steps,
               "train": [pretrain.BATCH_SIZE, pretrain.LR]}  # fmt: skip
        state = pretrain.pretrained_state(
            lambda: _Full(_load_model(cfg.model, self.tokens, self.seed)),
            x, y, cfg.model.pretrain_steps, seed, key, cfg.world.cache_dir,
        )  # fmt: skip
        return {k.removeprefix("lm."): v for k, v in state.items()}

    def local_train(self, model, data, *, epochs, lr, batch_size, mu, rng, correction=None):
        model.activate()
        # LoRA dropout draws from torch's RNG: seed it from the client's generator, so a client's
        # update is the same whichever actor trains it and whatever ran there before
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(rng.integers(2**62)))
            return super().local_train(
                model,
                data,
                epochs=epochs,
                lr=lr,
                batch_size=batch_size,
                mu=mu,
                rng=rng,
                correction=correction,
            )

    def train_flops_per_sample(self) -> float:
        """Measured with ``torch.utils.flop_counter`` on a batch of client 0's train examples
        (full ``max_len`` rows: padding is computed too)."""
        x = self.client_data(0).x_train[:4]
        return train_flops_per_sample(self.build_model(), x)

    def save_artifacts(self, folder) -> list[str]:
        """The BPE tokenizer trained on the federation's text (``tokenizer.json``, loadable with
        ``tokenizers.Tokenizer.from_file`` or ``PreTrainedTokenizerFast(tokenizer_file=...)``);
        nothing for a model directory's own tokenizer."""
        if self.cfg.model.path is not None:
            return []
        self.tokens.backend.save(str(Path(folder) / TOKENIZER_FILE))
        return [TOKENIZER_FILE]

    def train_memory_bytes(self, batch_size: int) -> int:
        """The frozen base's weights, the adapter and its gradients, and the activations saved
        for backward on a batch of ``batch_size`` full-length rows of client 0."""
        model = self.build_model()
        x = self.client_data(0).x_train[:1].expand(batch_size, -1).contiguous()
        return train_memory_bytes(model, x)

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(self, model, x, y) -> dict[str, float]:
        nll, correct, tokens = token_scores(model, x, y, _EVAL_CHUNK)
        if not tokens:
            nan = float("nan")
            return {"loss": nan, "accuracy": nan, "perplexity": nan, "exact_match": nan,
                    "token_f1": nan}  # fmt: skip
        loss = nll / tokens
        # evenly spread over the stacked split, so every eval client's prompts are decoded
        pick = np.unique(np.linspace(0, len(x) - 1, min(self.cfg.decode_examples, len(x))).round())
        pick = torch.from_numpy(pick.astype(np.int64))
        em, f1 = self.decode_scores(model, x[pick], y[pick])
        return {
            "loss": loss,
            "accuracy": correct / tokens,
            "perplexity": math.exp(min(loss, 700.0)),
            "exact_match": em,
            "token_f1": f1,
        }

    def decode_scores(self, model, x, y) -> tuple[float, float]:
        """Mean exact match and token F1 of greedy answers to the prompts in (x, y)."""
        if not len(x):
            return float("nan"), float("nan")
        prompts, refs = [], []
        for xi, yi in zip(x, y, strict=True):
            labelled = torch.nonzero(yi != IGNORE).flatten()
            start = int(labelled[0])
            prompts.append(xi[: start + 1])
            refs.append([t for t in yi[labelled].tolist() if t != self.tokens.eos])
        answers = greedy(model, prompts, self.cfg.max_new_tokens, self.tokens.eos)
        em = f1 = 0.0
        for got, ref in zip(answers, refs, strict=True):
            a, b = words(self.tokens.decode(got)), words(self.tokens.decode(ref))
            em += float(a == b)
            f1 += token_f1(a, b)
        return em / len(refs), f1 / len(refs)


@torch.no_grad()
def greedy(model, prompts: list[torch.Tensor], max_new: int, eos: int) -> list[list[int]]:
    """Greedy continuations (up to ``max_new`` tokens, cut before eos) of each prompt; prompts of
    equal length are decoded as one batch, so no padding enters the attention."""
    model.eval()
    out: list[list[int]] = [[] for _ in prompts]
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_length.setdefault(len(p), []).append(i)
    for _, members in sorted(by_length.items()):
        seq = torch.stack([prompts[i] for i in members])
        done = torch.zeros(len(members), dtype=torch.bool)
        for _ in range(max_new):
            nxt = model(seq)[:, :, -1].argmax(dim=1)
            done |= nxt == eos
            seq = torch.cat([seq, nxt[:, None]], dim=1)
            if bool(done.all()):
                break
        width = seq.shape[1] - len(prompts[members[0]])
        for row, i in enumerate(members):
            new = seq[row, seq.shape[1] - width :].tolist()
            out[i] = new[: new.index(eos)] if eos in new else new
    return out


def words(text: str) -> list[str]:
    """SQuAD-style normalisation: lower case, word characters only."""
    return re.findall(r"\w+", text.lower())


def token_f1(pred: list[str], ref: list[str]) -> float:
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if not common:
        return 0.0
    p, r = common / len(pred), common / len(ref)
    return 2 * p * r / (p + r)


def train_memory_bytes(model, x: torch.Tensor) -> int:
    """Weights (base and adapter), the adapter's gradients, and the distinct storages autograd
    saves for the backward pass of ``x`` (``torch.autograd.graph.saved_tensors_hooks``)."""
    model.activate()
    model.train()
    # the frozen base and this adapter's tensors (FFA-LoRA's frozen A included), not the other
    # adapters the shared base carries
    own = f".{model.adapter}."
    weights = sum(p.numel() * p.element_size() for name, p in model._base.peft.named_parameters()
                  if ".lora_" not in name or own in name)  # fmt: skip
    grads = sum(p.numel() * p.element_size() for p in model.parameters())
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor):
        if not isinstance(t, torch.nn.Parameter):  # weights are counted once, above
            storage = t.untyped_storage()
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with (
        torch.random.fork_rng(devices=[]),
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
    ):
        logits = model(x)
        loss = logits.float().mean()
    loss.backward()
    for p in model.parameters():
        p.grad = None
    return int(weights + grads + sum(saved.values()))


def train_flops_per_sample(model, x: torch.Tensor) -> float:
    """Forward + backward FLOPs of one example (``torch.utils.flop_counter``), as measured on a
    batch of ``x``."""
    from torch.utils.flop_counter import FlopCounterMode

    model.activate()
    model.train()
    with torch.random.fork_rng(devices=[]), FlopCounterMode(display=False) as counter:
        logits = model(x)
        loss = logits.float().mean()
        loss.backward()
    for p in model.parameters():
        p.grad = None
    return counter.get_total_flops() / max(len(x), 1)
