"""Federated workloads (installed as ``fedray.workloads``)."""

from __future__ import annotations

import importlib

from fedray.workloads.base import ClientData, ParameterLayout, Workload

# name -> (module, class); modules import lazily so a run only loads the workload it uses
_REGISTRY = {
    "synthetic": ("fedray.workloads.synthetic", "Synthetic"),
    "ecom_intent": ("fedray.workloads.ecommerce.classify", "EcomIntent"),
    "ecom_relation": ("fedray.workloads.ecommerce.classify", "EcomRelation"),
    "ecom_ner": ("fedray.workloads.ecommerce.ner", "EcomNer"),
    "ecom_lm": ("fedray.workloads.ecommerce.lm", "EcomLM"),
    "ecom_kg": ("fedray.workloads.ecommerce.kg", "EcomKG"),
    "ecom_rec": ("fedray.workloads.ecommerce.rec", "EcomRec"),
    "ecom_qa_lora": ("fedray.workloads.ecommerce.hf_lm", "EcomQaLora"),
}


def workload_class(name: str) -> type[Workload]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown workload {name!r}; known: {', '.join(_REGISTRY)}")
    module, cls = _REGISTRY[name]
    return getattr(importlib.import_module(module), cls)


def make_workload(cfg, seed: int) -> Workload:
    """Build the workload named by a :class:`fedray.config.WorkloadConfig`."""
    return workload_class(cfg.name)(cfg, seed)


def metric_names(cfg) -> tuple[str, ...]:
    """Extra metrics the workload reports (``eval_<name>`` columns), known before it is built."""
    return tuple(workload_class(cfg.name).metric_names)


__all__ = [
    "ClientData",
    "ParameterLayout",
    "Workload",
    "make_workload",
    "metric_names",
    "workload_class",
]
