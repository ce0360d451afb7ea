"""The schema of a training run (a ``train`` cell, gradbench.training.cell): what a suite's ``train:`` block expands to.

Torch-free, so ``gradbench validate`` checks a training suite without importing torch. The θ-, φ- and warm-up
estimators' own parameters are checked against their schemas in the registry.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_serializer, model_validator

from gradbench import registry

TRAIN = "train"  # the rows' protocol and estimator label of a training cell, and its seeds' derivation tag
ENERGY_BASED = frozenset({"energy_based"})


class TrainParams(BaseModel):
    """One training run: θ (decoder) with ``theta_estimator`` and φ (encoder) with ``phi_estimator``, each run with
    R = 1 on the minibatch target; Adam with the learning-rate schedule below; replicates are ``train_seed``s."""

    model_config = ConfigDict(extra="forbid", strict=True)
    theta_estimator: Literal["elbo", "iwae", "coupled_isir", "coupled_pimh", "sumo", "isir", "pimh", "iwae_reparam",
                             "exact_sampling", "cd", "pcd", "coupled_gibbs"] = Field(
        "elbo", description="registered ∇θ estimator run with R = 1 on each minibatch")
    theta_params: dict[str, int | float | str | bool | None] = Field(default_factory=dict, description="its parameters")
    phi_estimator: Literal["reparam_elbo", "iwae_reparam", "dreg", "stl", "vimco", "rloo", "disarm", "arm",
                           "reinforce"] | None = Field(
        "reparam_elbo", description="registered ∇φ estimator run with R = 1 on each minibatch (vimco … reinforce: "
                                    "score-function estimators, for a discrete (Bernoulli) encoder); "
                                    "null: θ-only model (rbm, ising)")
    phi_params: dict[str, int | float | str | bool | None] = Field(default_factory=dict, description="its parameters")
    train_seed: int = Field(0, ge=0, description="initialisation, minibatch order and noise (shared by every estimator pair)")
    budget: Literal["steps", "evals", "seconds"] = Field("steps", description="what stops training")
    budget_value: float = Field(1000, gt=0, description="optimiser steps, log-joint evaluations, or seconds")
    max_steps: int = Field(1_000_000, gt=0, description="hard cap on optimiser steps (evals/seconds budgets)")
    batch_size: int = Field(32, gt=0, description="minibatch size (without replacement, reshuffled every epoch)")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate at step 0")
    lr_schedule: Literal["constant", "cosine"] = Field("constant", description="cosine: lr · (f + (1 − f)(1 + cos πt/T)/2)")
    lr_final_factor: float = Field(0.1, gt=0, le=1, description="f, the cosine schedule's final lr / lr (steps budget)")
    lr_horizon: Literal["max_steps", "budget"] = Field(
        "max_steps", description="evals/seconds budgets: the cosine runs over max_steps, or over the budget spent")
    encoder_hidden: list[int] = Field(default_factory=lambda: [32], description="encoder MLP widths (φ is re-initialised; "
                                                                              "a Bernoulli encoder has at most one)")
    test_n: int | None = Field(None, gt=0, description="held-out test points (first n of the test split; None: all)")
    train_eval_n: int = Field(300, gt=0, description="fixed subset of training points for train_loglik (the first n)")
    quadrature_nodes: int = Field(16, ge=2, description="latent_dim ≤ 2: n Gauss–Hermite nodes per axis (value: 2n; error: |ℓ_2n − ℓ_n|)")
    eval_K: int = Field(5000, gt=1, description="IWAE K of the held-out estimate when quadrature is not possible")
    curve_every: int = Field(50, gt=0, description="steps between curve evaluations")
    curve_n: int = Field(100, gt=0, description="test / train points of each curve evaluation")
    curve_K: int = Field(100, gt=1, description="IWAE K of the curve estimates")
    checkpoint_every: int = Field(100, gt=0, description="steps between atomic checkpoints")
    warmup_theta_estimator: Literal["elbo", "iwae", "coupled_isir", "coupled_pimh", "sumo", "isir", "pimh",
                                    "iwae_reparam"] | None = Field(
        None, description="θ-estimator of the warm-up (e.g. iwae before coupled_isir); None: no warm-up")
    warmup_theta_params: dict[str, int | float | str | bool | None] = Field(default_factory=dict,
                                                                          description="its parameters")
    warmup_budget: Literal["steps", "evals"] = Field("steps", description="what ends the warm-up")
    warmup_value: float = Field(0, ge=0, description="warm-up length: optimiser steps or log-joint evaluations")
    eval_refit_steps: int = Field(0, ge=0, description="> 0: also evaluate after refitting a fresh encoder on the "
                                                       "held-out points (θ frozen) for this many IWAE steps")
    eval_refit_K: int = Field(8, ge=2, description="IWAE K of the refit's φ-gradient")
    eval_refit_lr: float = Field(1e-3, gt=0, description="Adam learning rate of the refit")
    eval_K_check: int | None = Field(None, gt=1, description="also the IWAE bound at this smaller K on the first "
                                                             "eval_check_n test points (convergence in K)")
    eval_check_n: int = Field(500, gt=0, description="test points of the convergence-in-K check")
    eval_batch: int | None = Field(None, gt=0, description="test points per IWAE evaluation chunk (memory); "
                                                           "None: all at once")
    snapshot_steps: list[int] = Field(default_factory=list, description="steps at which (θ, φ) are kept in "
                                      "<out>/snapshots/<cell_id>/step-<N>.pt (0: the initial state); targets can be "
                                      "built from them (params: {checkpoint: ..., step: N})")

    @field_validator("snapshot_steps")
    @classmethod
    def _snapshot_steps(cls, value: list[int]) -> list[int]:
        if any(s < 0 for s in value):
            raise ValueError(f"snapshot steps must be ≥ 0, got {value}")
        if len(set(value)) != len(value):
            raise ValueError(f"a snapshot step is listed twice: {value}")
        return sorted(value)

    @model_validator(mode="after")
    def _snapshots_within_budget(self) -> TrainParams:
        late = [s for s in self.snapshot_steps if s > min(self.max_steps, self.budget_value if self.budget == "steps"
                                                          else self.max_steps)]
        if late:
            raise ValueError(f"snapshot step(s) {late} lie past the last training step")
        return self

    @model_serializer(mode="wrap")
    def _without_empty_snapshots(self, handler: Any) -> dict[str, Any]:
        """``snapshot_steps`` is left out when empty, so a cell without snapshots has the parameters (and table
        columns) it had before the setting existed."""
        out = handler(self)
        if not out.get("snapshot_steps"):
            out.pop("snapshot_steps", None)
        return out

    @field_validator("warmup_theta_params")
    @classmethod
    def _warmup_params(cls, value: dict[str, object], info: ValidationInfo) -> dict[str, object]:
        """Check warmup_theta_params against the warm-up estimator's own schema."""
        name = info.data.get("warmup_theta_estimator")
        if name is None:
            if value:
                raise ValueError("warmup_theta_params given without warmup_theta_estimator")
            return value
        return _check_sub_params("warmup_theta", name, value)

    @field_validator("theta_params", "phi_params")
    @classmethod
    def _sub_estimator_params(cls, value: dict[str, object], info: ValidationInfo) -> dict[str, object]:
        """Check theta_params / phi_params against the named estimator's own schema (at ``gradbench validate``)."""
        role = str(info.field_name).removesuffix("_params")
        name = info.data.get(f"{role}_estimator")
        if name is None:  # the estimator name itself was invalid: that error is reported
            return value
        return _check_sub_params(role, name, value)


def _check_sub_params(role: str, name: str, value: dict[str, object]) -> dict[str, object]:
    """``value`` validated against estimator ``name``'s schema; one line naming the role and the parameter."""
    from pydantic import ValidationError

    schema = registry.ESTIMATORS[name].params
    unknown = [k for k in value if k not in schema.model_fields]
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], list(schema.model_fields), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown parameter {unknown[0]!r} of {role}_estimator {name!r}{hint} "
                         f"(known: {', '.join(schema.model_fields) or 'none'})")
    try:
        schema.model_validate(value)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(map(str, err["loc"]))
        raise ValueError(f"{role}_estimator {name!r}: {where + ': ' if where else ''}{err['msg']}") from None
    return value


def requires(params: dict[str, Any]) -> frozenset[str]:
    """What a training run needs of its target: its θ-, φ- and warm-up estimators' requirements (of the target's kind
    of latent: a fresh encoder of the same kind is trained — Gaussian, reparameterised, for real z; Bernoulli, score
    only, for binary z); θ-only training (``phi_estimator: null``) is for energy-based models."""
    est = registry.ESTIMATORS
    theta = est[params.get("theta_estimator", "elbo")].required(params.get("theta_params", {}))
    if params.get("phi_estimator", "reparam_elbo") is None:
        return theta | ENERGY_BASED
    phi = est[params.get("phi_estimator", "reparam_elbo")].required(params.get("phi_params", {}))
    warm = params.get("warmup_theta_estimator")
    warm_needs = est[warm].required(params.get("warmup_theta_params", {})) if warm is not None else frozenset()
    return theta | phi | warm_needs


def runs(params: dict[str, Any]) -> tuple[str, ...]:
    """The registered estimators a training run calls by name: θ, φ (none for θ-only training) and the warm-up θ."""
    return tuple(n for n in (params.get("theta_estimator", "elbo"), params.get("phi_estimator", "reparam_elbo"),
                             params.get("warmup_theta_estimator")) if n is not None)
