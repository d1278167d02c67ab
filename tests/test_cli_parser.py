"""The ``ldm`` parser: "did you mean" on a typo, defaults in --help, deprecated spellings; A1111 sampler names."""

from __future__ import annotations

import pytest

from latent_diffusion.cli import build_parser, main
from latent_diffusion.cli_parser import Parser, deprecated_alias
from latent_diffusion.diffusion.samplers import (SAMPLERS, a1111_infotext, a1111_samplers, canonical_sampler,
                                                 get_sampler)
from latent_diffusion.errors import ConfigError


def _error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    return capsys.readouterr().err


def test_a_misspelled_flag_gets_the_close_one_from_the_chosen_subcommand(capsys) -> None:
    err = _error(capsys, ["txt2img", "--stpes", "10", "--out", "x"])
    assert "ldm txt2img: error: unrecognized arguments: --stpes 10 (did you mean --steps?)" in err


def test_a_misspelled_choice_and_subcommand_get_the_close_one(capsys) -> None:
    assert "invalid choice: 'superess'; did you mean 'superres'?" in _error(capsys, ["demo", "--task", "superess"])
    err = _error(capsys, ["txt2im"])
    assert "ldm: error:" in err and "invalid choice: 'txt2im'; did you mean 'txt2img'?" in err


def test_a_far_off_flag_gets_no_guess(capsys) -> None:
    err = _error(capsys, ["txt2img", "--zzzzzz", "--out", "x"])
    assert "unrecognized arguments: --zzzzzz" in err and "did you mean" not in err


def test_help_shows_defaults(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["eval", "txt2img", "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # unwrapped
    assert "--sampler SAMPLER (default: ddim)" in out and "(default: 1.0 3.0 5.0 7.5)" in out
    assert "(default: None)" not in out and "(default: False)" not in out


def test_help_adds_no_default_where_the_text_has_one() -> None:
    p = Parser(prog="t")
    p.add_argument("--count", type=int, default=10, help="how many (default 10)")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--name", default=None, help="a name")
    p.add_argument("--fast", action="store_true", help="go fast")
    text = " ".join(p.format_help().split())
    assert "(default 10)" in text and "(default: 10)" not in text and "--size SIZE (default: 64)" in text
    assert "a name --fast" in text.replace("NAME ", "") and "go fast" in text and "(default: False)" not in text


def test_a_deprecated_spelling_works_warns_and_is_hidden(capsys) -> None:
    args = build_parser().parse_args(["train", "ldm", "--config", "c.yaml", "--out-dir", "runs/x"])
    assert args.out_dir == "runs/x"
    assert capsys.readouterr().err.strip() == "ldm: warning: --out-dir is deprecated; use --out"
    assert build_parser().parse_args(["train", "ldm", "--config", "c.yaml", "--out", "y"]).out_dir == "y"
    assert build_parser().parse_args(["train", "autoencoder", "--config", "c", "--out-dir", "z"]).out_dir == "z"
    assert build_parser().parse_args(["train", "judge", "--steps", "5"]).steps == 5
    assert build_parser().parse_args(["bench", "--no-bf16"]).precision == "fp32"
    assert build_parser().parse_args(["bench", "--bf16"]).precision == "bf16"
    assert build_parser().parse_args(["bench"]).precision == "auto"
    assert "--no-bf16 is deprecated; use --precision fp32" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "ldm", "--help"])
    out = capsys.readouterr().out
    assert "--out OUT" in out and "--out-dir" not in out


def test_deprecated_alias_keeps_the_new_options_default() -> None:
    p = Parser(prog="t")
    p.add_argument("--max-steps", dest="steps", type=int, default=7)
    deprecated_alias(p, "--steps", dest="steps", use="--max-steps", type=int)
    assert p.parse_args([]).steps == 7 and p.parse_args(["--max-steps", "3"]).steps == 3


A1111 = [("Euler a", None, "euler_a"), ("k_euler_a", None, "euler_a"), ("euler a", None, "euler_a"),
         ("Euler", None, "euler"), ("Heun", None, "heun"), ("DDIM", None, "ddim"), ("PLMS", None, "plms"),
         ("DPM++ 2M", None, "dpmpp_2m"), ("DPM++ 2M", "Uniform", "dpmpp_2m"), ("k_dpmpp_2m", None, "dpmpp_2m"),
         ("DPM++ 2M Karras", None, "dpmpp_2m_karras"), ("k_dpmpp_2m_ka", None, "dpmpp_2m_karras"),
         ("DPM++ 2M", "Karras", "dpmpp_2m_karras"),
         ("DPM++ 2M", "Automatic", "dpmpp_2m_karras"),  # A1111 1.9+: DPM++ 2M's own default is Karras
         ("DPM++ 2M SDE", None, "dpmpp_sde"), ("DDIM", "Karras", "ddim"),  # DDIM ignores the schedule, as in A1111
         ("dpmpp_2m", None, "dpmpp_2m"), ("unipc", None, "unipc")]


@pytest.mark.parametrize("name,schedule,ours", A1111)
def test_a1111_names_map_to_ours(name: str, schedule: str | None, ours: str) -> None:
    assert canonical_sampler(name, schedule) == ours
    if schedule is None:
        assert get_sampler(name) is SAMPLERS[ours]


@pytest.mark.parametrize("name,schedule,says", [
    ("DPM++ SDE", None, "our 'dpmpp_sde' is A1111's 'DPM++ 2M SDE'"),  # alike names, another solver
    ("UniPC", None, "bh1, order 3"),
    ("UNIPC", None, "ambiguous"),
    ("LMS", None, "not one of ours"),
    ("DPM++ 2M SDE", "Automatic", "'Exponential'"),  # its Automatic is exponential: not one of ours
    ("Euler a Karras", None, "schedule type 'Karras'"),
    ("DPM++ 2M", "Karas", "did you mean 'Karras'?"),
    ("dpmpp2m", None, "did you mean 'dpmpp_2m'?"),
    ("eular_a", None, "did you mean 'euler_a'?"),
])
def test_other_a1111_names_and_typos_are_refused_naming_the_accepted_ones(name: str, schedule: str | None,
                                                                          says: str) -> None:
    with pytest.raises(ConfigError) as e:
        canonical_sampler(name, schedule)
    msg = str(e.value)
    assert says in msg and ("ambiguous" in says or "accepted: ddpm" in msg or "A1111's: Automatic" in msg)


def test_a1111_tables_name_only_our_samplers_and_round_trip() -> None:
    rows = a1111_samplers()
    assert {ours for _, ours, _ in rows} == set(SAMPLERS) - {"ddpm", "unipc"}
    for label, ours, aliases in rows:
        assert canonical_sampler(label) == ours and all(canonical_sampler(a) == ours for a in aliases)
    for ours in SAMPLERS:
        pair = a1111_infotext(ours)
        assert pair is None if ours in ("ddpm", "unipc") else canonical_sampler(*pair) == ours
