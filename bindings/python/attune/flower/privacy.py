"""Differential privacy of federated rounds: the settings, the population's
accountant (Flower's RDP accountant, the ``flwr[dp]`` extra) and what a
round tells devices that add the noise themselves."""

from dataclasses import dataclass
from typing import Optional


@dataclass
class Privacy:
    """User-level differential privacy of the rounds. ``at="server"``
    (central): each device clips its update's change to ``clip``, Flower's
    DP wrapper adds Gaussian noise of ``noise · clip / sampled`` to the
    average, and Flower's RDP accountant counts the population's ε at
    ``delta`` (default 1 / population); a round that would pass ``budget``
    is not run. ``at="device"`` (local): each device adds noise of
    ``noise · clip`` to its own update and charges its ledger, whose ε may
    not pass ``budget``."""

    at: str
    noise: float
    clip: float
    budget: Optional[float] = None
    delta: Optional[float] = None


class PrivacyBudgetTooSmall(ValueError):
    """The rounds asked for would spend more ε than the budget allows."""


def population_accountant(privacy: Privacy, population: int, sampled: int, rounds: int):
    """Flower's RDP accountant for `rounds` releases of the average of
    `sampled` clipped updates, at δ = 1 / `population` unless set. Flower
    accounts fixed clipping without amplification by sampling. Rounds that
    would pass the budget are refused here, before the first of them."""
    from flwr.supercore.privacy_accounting import (
        GaussianPrivacyEvent,
        NeighboringRelation,
        PrivacyConfig,
        SamplingMethod,
    )
    from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

    accountant = RdpAccountant(
        PrivacyConfig(
            target_delta=privacy.delta if privacy.delta is not None else 1.0 / population,
            population_size=population,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
            max_epsilon=privacy.budget,
        )
    )
    release = GaussianPrivacyEvent(noise_multiplier=privacy.noise, sample_size=sampled, population_size=population)
    if privacy.budget is not None and accountant.would_exceed(release, count=rounds):
        raise PrivacyBudgetTooSmall(
            f"{rounds} rounds at noise multiplier {privacy.noise} would pass the budget "
            f"ε = {privacy.budget}: fewer rounds or more noise"
        )
    return accountant


def device_privacy_config(privacy: Privacy) -> dict:
    """What a round tells devices that add the noise themselves."""
    if privacy.budget is None:
        raise ValueError("noise on the devices needs each device's ε budget")
    return {"dp-clip": float(privacy.clip), "dp-noise": float(privacy.noise), "dp-epsilon": float(privacy.budget)}


def privacy_of(run) -> Optional[Privacy]:
    """Run config ``dp-at`` (server or device), ``dp-noise``, ``dp-clip``,
    ``dp-budget``, ``dp-delta``; none without ``dp-noise`` (absent or 0, as
    in the app's ``pyproject.toml``)."""
    noise = set_number(run, "dp-noise")
    if noise is None:
        return None
    return Privacy(
        at=str(run.get("dp-at", "server")),
        noise=noise,
        clip=float(run.get("dp-clip", 1.0)),
        budget=set_number(run, "dp-budget"),
        delta=set_number(run, "dp-delta"),
    )


def set_number(run, key: str) -> Optional[float]:
    """A run-config number that is off when absent or 0."""
    value = float(run.get(key, 0) or 0)
    return value if value != 0 else None
