"""Sampler names: ours (``samplers.SAMPLERS``' keys) and AUTOMATIC1111's, and the function that turns either into ours.

A1111 names a sampler ("DPM++ 2M", aliases such as "k_dpmpp_2m") and, since v1.9, a separate "Schedule type"
("Automatic", "Uniform", "Karras", ...); before 1.9 the schedule was part of the name ("DPM++ 2M Karras"), and 1.9+
still reads those names that way. An A1111 name is an alias of ours only where it means the same solver (update rule,
order, variant, default η) on the same kind of σ spacing:

- a bare name (no schedule type, as pre-1.9 infotexts) or "Uniform": the model's own evenly spaced timesteps — our
  samplers' default grids (``discretization``; the exact grid follows diffusers, k-diffusion's may differ by a step);
- "Automatic" (A1111 1.9+): the sampler's own default, which is Karras for "DPM++ 2M" and exponential for
  "DPM++ 2M SDE" (``A1111Sampler.automatic``);
- "Karras": Karras et al.'s σ spacing (we have it for DPM++ 2M only: ``dpmpp_2m_karras``);
- DDIM and PLMS ignore the schedule type (they step on the timestep grid), as in A1111.

Not ours, though the names are alike: A1111's "DPM++ SDE" (k-diffusion's single-step ``sample_dpmpp_sde``; our
``dpmpp_sde`` is A1111's "DPM++ 2M SDE"), "UniPC" (bh1, order 3 by A1111's defaults; ours is bh2, order 2) and "LMS"
(k-diffusion's linear multistep; our ``plms`` is CompVis' pseudo linear multistep). This module imports only errors.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Collection

from ..errors import ConfigError


@dataclass(frozen=True)
class A1111Sampler:
    """One A1111 sampler. ``ours``: (A1111 scheduler name, our sampler) pairs with the same meaning; ``automatic``:
    the scheduler A1111 1.9+ runs for "Automatic"; ``timesteps``: the schedule type does not apply (DDIM, PLMS,
    UniPC); ``note``: what it is, said when it is not ours."""

    label: str
    aliases: tuple[str, ...]
    ours: tuple[tuple[str, str], ...] = ()
    automatic: str = "uniform"
    timesteps: bool = False
    note: str = ""


A1111_SAMPLERS: tuple[A1111Sampler, ...] = (
    A1111Sampler("Euler a", ("k_euler_a", "k_euler_ancestral"), (("uniform", "euler_a"),)),
    A1111Sampler("Euler", ("k_euler",), (("uniform", "euler"),)),
    A1111Sampler("Heun", ("k_heun",), (("uniform", "heun"),)),
    A1111Sampler("DPM++ 2M", ("k_dpmpp_2m",), (("uniform", "dpmpp_2m"), ("karras", "dpmpp_2m_karras")), "karras"),
    A1111Sampler("DPM++ 2M SDE", ("k_dpmpp_2m_sde",), (("uniform", "dpmpp_sde"),), "exponential"),
    A1111Sampler("DDIM", ("ddim",), (("uniform", "ddim"),), timesteps=True),
    A1111Sampler("PLMS", ("plms",), (("uniform", "plms"),), timesteps=True),
    A1111Sampler("UniPC", ("unipc",), timesteps=True,
                 note="UniPC bh1, order 3 (A1111's defaults); our 'unipc' is bh2, order 2 (diffusers' defaults)"),
    A1111Sampler("DPM++ SDE", ("k_dpmpp_sde",), automatic="karras",
                 note="k-diffusion's single-step sample_dpmpp_sde (two model calls a step); our 'dpmpp_sde' is "
                      "A1111's 'DPM++ 2M SDE'"),
    A1111Sampler("DPM++ 2M SDE Heun", ("k_dpmpp_2m_sde_heun",), automatic="exponential",
                 note="the Heun variant of DPM++ 2M SDE; our 'dpmpp_sde' is the midpoint one ('DPM++ 2M SDE')"),
    A1111Sampler("LMS", ("k_lms",), note="k-diffusion's linear multistep; our 'plms' is CompVis' PLMS ('PLMS')"),
    A1111Sampler("DPM2", ("k_dpm_2",), automatic="karras"),
    A1111Sampler("DPM2 a", ("k_dpm_2_a",), automatic="karras"),
    A1111Sampler("DPM++ 2S a", ("k_dpmpp_2s_a",), automatic="karras"),
    A1111Sampler("DPM++ 3M SDE", ("k_dpmpp_3m_sde",), automatic="exponential"),
    A1111Sampler("DPM fast", ("k_dpm_fast",)),
    A1111Sampler("DPM adaptive", ("k_dpm_ad",)),
    A1111Sampler("Restart", ("restart",), automatic="karras"),
    A1111Sampler("LCM", ("k_lcm",)),
    A1111Sampler("DDIM CFG++", ("ddim_cfgpp",), timesteps=True),
)

# A1111's schedule types (modules/sd_schedulers.py): name -> label; "SGMUniform" is an alias of sgm_uniform
A1111_SCHEDULES = {"automatic": "Automatic", "uniform": "Uniform", "karras": "Karras", "exponential": "Exponential",
                   "polyexponential": "Polyexponential", "sgm_uniform": "SGM Uniform", "kl_optimal": "KL Optimal",
                   "align_your_steps": "Align Your Steps", "simple": "Simple", "normal": "Normal", "ddim": "DDIM",
                   "beta": "Beta"}
_SCHEDULE_NAMES = {**{k: k for k in A1111_SCHEDULES}, **{v.lower(): k for k, v in A1111_SCHEDULES.items()},
                   "sgmuniform": "sgm_uniform"}
# pre-1.9 aliases of the names that carried their schedule ("DPM++ 2M Karras" -> k_dpmpp_2m_ka)
_SCHEDULED_ALIASES = {"k_lms_ka": ("LMS", "karras"), "k_dpm_2_ka": ("DPM2", "karras"),
                      "k_dpm_2_a_ka": ("DPM2 a", "karras"), "k_dpmpp_2s_a_ka": ("DPM++ 2S a", "karras"),
                      "k_dpmpp_2m_ka": ("DPM++ 2M", "karras"), "k_dpmpp_sde_ka": ("DPM++ SDE", "karras"),
                      "k_dpmpp_2m_sde_ka": ("DPM++ 2M SDE", "karras"),
                      "k_dpmpp_2m_sde_exp": ("DPM++ 2M SDE", "exponential"),
                      "k_dpmpp_2m_sde_heun_ka": ("DPM++ 2M SDE Heun", "karras"),
                      "k_dpmpp_2m_sde_heun_exp": ("DPM++ 2M SDE Heun", "exponential"),
                      "k_dpmpp_3m_sde_ka": ("DPM++ 3M SDE", "karras"),
                      "k_dpmpp_3m_sde_exp": ("DPM++ 3M SDE", "exponential")}
_BY_LABEL = {s.label: s for s in A1111_SAMPLERS}
_BY_ALIAS = {a: (s, None) for s in A1111_SAMPLERS for a in s.aliases} | {
    a: (_BY_LABEL[label], sched) for a, (label, sched) in _SCHEDULED_ALIASES.items()}


def a1111_samplers() -> list[tuple[str, str, tuple[str, ...]]]:
    """(A1111 name, our name, A1111's aliases) of every A1111 sampler name we run, one row per sampler of ours that
    has one: what an A1111-compatible ``/sdapi/v1/samplers`` lists. "DPM++ 2M Karras" is A1111's pre-1.9 name; 1.9+
    reads it as "DPM++ 2M" with schedule type "Karras"."""
    rows = [(s.label, ours, s.aliases) for s in A1111_SAMPLERS for sched, ours in s.ours if sched == "uniform"]
    return rows + [("DPM++ 2M Karras", "dpmpp_2m_karras", ("k_dpmpp_2m_ka",))]


def a1111_infotext(ours: str) -> tuple[str, str] | None:
    """("Sampler", "Schedule type") values an A1111 1.9+ infotext needs to mean our sampler ``ours`` (None: A1111
    has no such sampler: ddpm, unipc). ``resolve_sampler`` reads them back to ``ours``."""
    for s in A1111_SAMPLERS:
        for sched, name in s.ours:
            if name == ours:
                return s.label, "Automatic" if s.timesteps else A1111_SCHEDULES[sched]
    return None


def resolve_sampler(name: str, ours: Collection[str], schedule_type: str | None = None) -> str:
    """Our sampler (one of ``ours``) for ``name``: ours itself, or an A1111 name or alias ("Euler a", "k_euler_a",
    "DPM++ 2M Karras"), case-insensitively where that is unambiguous. ``schedule_type``: A1111's "Schedule type"
    (infotexts and API requests of 1.9+; None: the name alone, as pre-1.9); a schedule in the name wins, as in A1111.
    An unknown name, or an A1111 one we do not run, raises ``ConfigError`` naming the accepted names (and "did you
    mean" for a typo)."""
    if not isinstance(name, str):
        raise ConfigError(f"sampler must be a name (a string), got {name!r}; accepted: {_accepted(ours)}")
    if name in ours:
        return name
    found = _find(name, ours)
    if isinstance(found, str):
        return found
    if found is None:
        hint = _suggest(name, ours)
        raise ConfigError(f"unknown sampler {name!r}{' (' + hint + ')' if hint else ''}; accepted: {_accepted(ours)}")
    entry, sched = found
    return _ours(entry, sched or _schedule(schedule_type), ours)


def _find(name: str, ours: Collection[str]) -> str | tuple[A1111Sampler, str | None] | None:
    """Our name, or (A1111 entry, the scheduler its name carries) for ``name``; None if unknown. Case-folded, a name
    that is both ours and an A1111 name of something else (``UNIPC``) is an error."""
    exact = _a1111(name)
    if exact is not None:
        return exact
    mine = next((k for k in ours if k.lower() == name.lower()), None)
    theirs = _a1111(name.lower(), fold=True)
    if mine is not None and theirs is not None and _ours(theirs[0], theirs[1] or "uniform", ours, strict=False) != mine:
        note = f": {theirs[0].note}" if theirs[0].note else ""
        raise ConfigError(f"sampler {name!r} is ambiguous: ours {mine!r}, or A1111's {theirs[0].label!r}, which is "
                          f"another sampler{note}; write {mine!r} for ours")
    return mine if mine is not None else theirs


def _a1111(name: str, fold: bool = False) -> tuple[A1111Sampler, str | None] | None:
    """(entry, scheduler in the name) of an A1111 label or alias, bare or with a schedule suffix ("DPM++ 2M Karras");
    ``fold``: ``name`` is lower-case, compare lower-case."""
    def lookup(n: str) -> tuple[A1111Sampler, str | None] | None:
        if not fold:
            return (_BY_LABEL[n], None) if n in _BY_LABEL else _BY_ALIAS.get(n)
        label = next((s for s in A1111_SAMPLERS if s.label.lower() == n), None)
        alias = next((a for a in _BY_ALIAS if a.lower() == n), None)
        return (label, None) if label else (_BY_ALIAS[alias] if alias else None)

    hit = lookup(name)
    if hit is not None:
        return hit
    for suffix, sched in _SCHEDULE_NAMES.items():
        if name.lower().endswith(" " + suffix):
            hit = lookup(name[:-len(suffix) - 1])
            if hit is not None:
                return hit[0], sched
    return None


def _schedule(schedule_type: str | None) -> str:
    """A1111 scheduler name of a "Schedule type" value (None: a bare name, i.e. the model's own spacing)."""
    if schedule_type is None:
        return "uniform"
    sched = _SCHEDULE_NAMES.get(str(schedule_type).strip().lower())
    if sched is None:
        close = difflib.get_close_matches(str(schedule_type).lower(), list(_SCHEDULE_NAMES), n=1, cutoff=0.6)
        hint = f" (did you mean {A1111_SCHEDULES[_SCHEDULE_NAMES[close[0]]]!r}?)" if close else ""
        raise ConfigError(f"unknown A1111 schedule type {schedule_type!r}{hint}; A1111's: "
                          f"{', '.join(A1111_SCHEDULES.values())}")
    return sched


def _ours(entry: A1111Sampler, asked: str, ours: Collection[str], strict: bool = True) -> str:
    """Our sampler for A1111's ``entry`` on scheduler ``asked`` ("automatic": the entry's own default); not strict:
    "" where we have none."""
    sched = entry.automatic if asked == "automatic" else asked
    sched = "uniform" if entry.timesteps or sched == "normal" else sched  # normal: the same σs as uniform
    mapping = dict(entry.ours)
    if mapping.get(sched) in ours:
        return mapping[sched]
    if not strict:
        return ""
    if not mapping:
        raise ConfigError(f"A1111's sampler {entry.label!r} is not one of ours"
                          f"{': ' + entry.note if entry.note else ''}; accepted: {_accepted(ours)}")
    via = " (what A1111 runs for 'Automatic')" if asked == "automatic" else ""
    have = ", ".join(f"{A1111_SCHEDULES[s]} ({o!r})" for s, o in entry.ours)
    raise ConfigError(f"A1111's {entry.label!r} on schedule type {A1111_SCHEDULES[sched]!r}{via} is not one of our "
                      f"samplers; we run it on: {have}; accepted: {_accepted(ours)}")


def _accepted(ours: Collection[str]) -> str:
    return f"{', '.join(ours)} (or A1111's {', '.join(label for label, _, _ in a1111_samplers())})"


def _suggest(name: str, ours: Collection[str]) -> str:
    """"did you mean 'x'?": the closest of ours, else of A1111's names and aliases; compared lower-case."""
    for pool in (list(ours), [s.label for s in A1111_SAMPLERS] + list(_BY_ALIAS)):
        folded = {c.lower(): c for c in pool}
        close = difflib.get_close_matches(name.lower(), list(folded), n=1, cutoff=0.6)
        if close:
            return f"did you mean {folded[close[0]]!r}?"
    return ""


__all__ = ["A1111Sampler", "A1111_SAMPLERS", "A1111_SCHEDULES", "a1111_samplers", "a1111_infotext",
           "resolve_sampler"]
