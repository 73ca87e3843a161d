"""Tests of :class:`tnplan.Network`: construction from every supported source, and validation."""

from __future__ import annotations

import json
import math
import string
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tnplan
from tnplan import Network, NetworkError

# The repository and shared/ are siblings (locally /work/main and /work/shared; in CI a clone and its shared/).
INSTANCES = Path(__file__).resolve().parents[2] / "shared" / "bench" / "instances"
EB_FILES = sorted((INSTANCES / "einsum-benchmark").glob("*.json"))
CTG_FILES = sorted((INSTANCES / "cotengra").glob("*.json"))


def numpy_output(equation: str, sizes: dict[str, int]) -> tuple[str, ...]:
    """The output labels numpy's einsum gives ``equation`` (numpy itself is the oracle).

    numpy only takes ASCII letters, so every label is renamed to a letter by an order-preserving map
    (labels sorted by code point -> letters sorted by code point), which keeps numpy's implicit
    "sorted" output order intact. Each label gets a distinct size, so the result's shape names them.
    """
    labels = sorted({ch for ch in equation if ch not in ",->"})
    letters = sorted(string.ascii_letters)
    to_letter = dict(zip(labels, letters, strict=False))
    eq = "".join(to_letter.get(ch, ch) for ch in equation)
    terms = eq.split("->")[0].split(",")
    arrays = [np.ones([sizes[lab] for lab in term]) for term in equation.split("->")[0].split(",")]
    assert len(arrays) == len(terms)
    shape = np.einsum(eq, *arrays).shape
    by_size = {sizes[lab]: lab for lab in labels}
    assert len(by_size) == len(labels), "sizes must be distinct to read labels back from the shape"
    return tuple(by_size[s] for s in shape)


def distinct_sizes(equation: str) -> dict[str, int]:
    labels = sorted({ch for ch in equation if ch not in ",->"})
    return {lab: 2 + k for k, lab in enumerate(labels)}


def shapes_for(equation: str, sizes: dict[str, int]) -> list[tuple[int, ...]]:
    return [tuple(sizes[lab] for lab in term) for term in equation.split("->")[0].split(",")]


def test_instance_folders_are_present() -> None:
    # Guards the parametrised tests below: an empty folder would silently collect nothing.
    assert len(EB_FILES) >= 10, INSTANCES
    assert len(CTG_FILES) >= 5, INSTANCES


# ---------------------------------------------------------------------------------------- from_einsum


@pytest.mark.parametrize(
    "equation",
    ["ab,bc->ac", "ab,bc->ca", "abc,cd,de->eab", "ij,ij->ij", "i,j->ij", "ab,bc,cd->", "aab,bc->ac"],
)
def test_from_einsum_explicit_output_matches_numpy(equation: str) -> None:
    sizes = distinct_sizes(equation)
    net = Network.from_einsum(equation, *shapes_for(equation, sizes))
    lhs, rhs = equation.split("->")
    assert net.inputs == tuple(tuple(term) for term in lhs.split(","))
    assert net.output == tuple(rhs)
    assert net.output == numpy_output(equation, sizes)
    assert net.shapes == tuple(shapes_for(equation, sizes))


@pytest.mark.parametrize(
    "equation",
    # 'Acc' holds a repeated index (a trace): it appears twice, so numpy leaves it out of the output;
    # mixed case checks the sort order (uppercase sorts before lowercase, as in numpy).
    ["ab,bc", "ba,cb", "bA,Acc,d", "abc", "ab,ab", "zyx,xw", "a,b,c"],
)
def test_from_einsum_implicit_output_follows_numpy(equation: str) -> None:
    sizes = distinct_sizes(equation)
    net = Network.from_einsum(equation, *shapes_for(equation, sizes))
    assert net.output == numpy_output(equation, sizes)
    assert (
        tuple(net.size_dict[lab] for lab in net.output)
        == np.einsum(equation, *[np.ones(s) for s in shapes_for(equation, sizes)]).shape
    )


def test_from_einsum_unicode_labels() -> None:
    net = Network.from_einsum("αβ,βγ->αγ", (2, 3), (3, 4))
    assert net.inputs == (("α", "β"), ("β", "γ"))
    assert net.output == ("α", "γ")
    assert net.size_dict == {"α": 2, "β": 3, "γ": 4}
    assert net.output == numpy_output("αβ,βγ->αγ", {"α": 2, "β": 3, "γ": 4})
    # Implicit output: α (U+03B1) and γ (U+03B3) appear once; sorted by code point, as numpy sorts.
    implicit = Network.from_einsum("βα,γβ", (3, 2), (4, 3))
    assert implicit.output == numpy_output("βα,γβ", {"α": 2, "β": 3, "γ": 4}) == ("α", "γ")


@pytest.mark.parametrize("equation", ["j3,3k->jk", "j3,3k", "01,12,2×->0×", "9a,a0"])
def test_from_einsum_digit_and_symbol_labels(equation: str) -> None:
    # einsum-benchmark uses digits (and symbols such as '×') as ordinary index labels.
    sizes = distinct_sizes(equation)
    net = Network.from_einsum(equation, *shapes_for(equation, sizes))
    assert net.inputs == tuple(tuple(term) for term in equation.split("->")[0].split(","))
    assert net.output == numpy_output(equation, sizes)
    assert dict(net.size_dict) == {lab: sizes[lab] for lab in net.labels}


def test_from_einsum_accepts_a_single_list_of_shapes() -> None:
    expected = Network.from_einsum("ab,bc->ac", (2, 3), (3, 4))
    assert Network.from_einsum("ab,bc->ac", [(2, 3), (3, 4)]) == expected
    assert Network.from_einsum("ab,bc->ac", [[2, 3], [3, 4]]) == expected
    assert Network.from_einsum("ab,bc->ac", ((2, 3), (3, 4))) == expected


def test_from_einsum_ignores_spaces() -> None:
    assert Network.from_einsum("ab, bc -> ac", (2, 3), (3, 4)) == Network.from_einsum("ab,bc->ac", (2, 3), (3, 4))


def test_comma_only_equation_is_two_scalars_as_in_numpy() -> None:
    # numpy reads ',' as two scalar operands: np.einsum(',', 2.0, 3.0) == 6.0.
    assert np.einsum(",", 2.0, 3.0) == 6.0
    net = Network.from_einsum(",", (), ())
    assert net.inputs == ((), ())
    assert net.output == ()
    # ... but without the two (scalar) shapes it cannot be honoured.
    with pytest.raises(NetworkError, match="2 operand"):
        Network.from_einsum(",")


# ---------------------------------------------------------------------------------------- from_opt_einsum


def test_from_opt_einsum_int_labels_and_hyperedge() -> None:
    # Index 1 sits on three tensors and is also open.
    inputs = [[0, 1], [1, 2], [1, 3]]
    sizes = {0: 2, 1: 3, 2: 4, 3: 5}
    net = Network.from_opt_einsum(inputs, [1, 0], sizes)
    assert net.inputs == ((0, 1), (1, 2), (1, 3))
    assert net.output == (1, 0)
    assert net.num_tensors == 3
    assert net.num_indices == 4
    assert dict(net.size_dict) == sizes
    assert net.labels == (0, 1, 2, 3)
    assert net.int_output == frozenset({net.label_ids[1], net.label_ids[0]})
    assert [lab for lab in net.labels if sum(lab in t for t in net.inputs) == 3] == [1]
    assert net.shapes == ((2, 3), (3, 4), (3, 5))
    # numpy's interleaved einsum form takes integer labels directly: the result's shape is the output's.
    arrays = [np.ones(s) for s in net.shapes]
    result = np.einsum(arrays[0], [0, 1], arrays[1], [1, 2], arrays[2], [1, 3], [1, 0])
    assert result.shape == tuple(net.size_dict[lab] for lab in net.output)


def test_from_opt_einsum_accepts_numpy_integer_sizes() -> None:
    # Sizes computed with numpy (np.prod, array.shape arithmetic, np.int64 from a config) are integers;
    # opt_einsum and cotengra accept them, and np.float64(3.0) is already accepted here.
    net = Network.from_opt_einsum([["a", "b"]], ["a"], {"a": np.int64(2), "b": np.int32(3)})
    assert dict(net.size_dict) == {"a": 2, "b": 3}


# ---------------------------------------------------------------------------------------- from_json


@pytest.mark.parametrize("file", EB_FILES, ids=[f.stem for f in EB_FILES])
def test_from_json_einsum_benchmark_instances(file: Path) -> None:
    data = json.loads(file.read_text(encoding="utf-8"))
    net = Network.from_json(file)
    assert net.num_tensors == len(data["shapes"])
    assert net.shapes == tuple(tuple(s) for s in data["shapes"])
    lhs, _, rhs = data["format_string"].partition("->")
    assert net.inputs == tuple(tuple(term) for term in lhs.split(","))
    assert net.output == tuple(rhs)
    for term, shape in zip(net.inputs, data["shapes"], strict=True):
        for lab, size in zip(term, shape, strict=True):
            assert net.size_dict[lab] == size


@pytest.mark.parametrize("file", CTG_FILES, ids=[f.stem for f in CTG_FILES])
def test_from_json_cotengra_instances(file: Path) -> None:
    data = json.loads(file.read_text(encoding="utf-8"))
    net = Network.from_json(file)
    assert net.num_tensors == len(data["inputs"])
    assert net.inputs == tuple(tuple(t) for t in data["inputs"])
    assert net.output == tuple(data["output"])
    used = {lab for t in data["inputs"] for lab in t}
    assert set(net.labels) == used
    assert dict(net.size_dict) == {lab: data["size_dict"][lab] for lab in used}


def test_to_json_from_json_round_trip_own_format(tmp_path: Path) -> None:
    # Mixed label types: ints must come back as ints and the string "1" must stay distinct from 1.
    net = Network.from_opt_einsum([[0, 1, "x"], [1, "1"], ["1", 0]], [0, "x"], {0: 2, 1: 3, "x": 4, "1": 5})
    file = tmp_path / "net.json"
    text = net.to_json(file)
    assert json.loads(text)["format"] == "tnplan.network/1"
    for back in (Network.from_json(file), Network.from_dict(json.loads(text))):
        assert back == net
        assert back.labels == net.labels
        assert [type(lab) for lab in back.labels] == [int, int, str, str]
        assert back.output == (0, "x")


def test_to_json_round_trip_unicode_labels(tmp_path: Path) -> None:
    net = Network.from_einsum("αβ,β×->α×", (2, 3), (3, 4))
    file = tmp_path / "net.json"
    net.to_json(file)
    assert Network.from_json(file) == net


def test_to_json_rejects_labels_json_cannot_hold() -> None:
    net = Network.from_opt_einsum([[("a", 1), "b"], ["b"]], [], {("a", 1): 2, "b": 3})
    with pytest.raises(NetworkError, match=r"\('a', 1\)"):
        net.to_json()


# ---------------------------------------------------------------------------------------- validation


def test_network_error_is_a_value_error() -> None:
    assert issubclass(NetworkError, ValueError)
    assert issubclass(NetworkError, tnplan.TnplanError)


def test_same_index_with_two_sizes() -> None:
    with pytest.raises(NetworkError) as err:
        Network.from_einsum("ab,bc->ac", (2, 3), (4, 5))
    assert "'b'" in str(err.value)
    assert "3" in str(err.value) and "4" in str(err.value)


def test_output_index_on_no_input() -> None:
    with pytest.raises(NetworkError, match="'c'"):
        Network.from_einsum("ab->c", (2, 3))
    with pytest.raises(NetworkError, match="'z'"):
        Network.from_opt_einsum([["a"]], ["z"], {"a": 2, "z": 3})


def test_repeated_output_index() -> None:
    with pytest.raises(NetworkError, match=r"'a'.*repeated"):
        Network.from_einsum("ab->aa", (2, 3))
    with pytest.raises(NetworkError, match=r"'a'.*repeated"):
        Network.from_opt_einsum([["a", "b"]], ["a", "a"], {"a": 2, "b": 3})


@pytest.mark.parametrize("size", [0, -2])
def test_size_below_one(size: int) -> None:
    with pytest.raises(NetworkError, match=f"'k'.*{size}"):
        Network.from_opt_einsum([["k"]], [], {"k": size})
    with pytest.raises(NetworkError, match=f"'k'.*{size}"):
        Network.from_einsum("k", (size,))


@pytest.mark.parametrize("size", [2.5, "3", None, True, math.inf, math.nan], ids=repr)
def test_non_integer_size(size: object) -> None:
    with pytest.raises(NetworkError, match="'k'"):
        Network.from_opt_einsum([["k"]], [], {"k": size})
    with pytest.raises(NetworkError, match="'k'"):
        Network.from_einsum("jk", (2, size))


def test_integral_float_size_is_accepted() -> None:
    assert Network.from_opt_einsum([["k"]], [], {"k": 3.0}).size_dict == {"k": 3}


def test_index_without_size() -> None:
    with pytest.raises(NetworkError, match=r"'b'.*tensor 1"):
        Network.from_opt_einsum([["a"], ["a", "b"]], [], {"a": 2})


def test_no_tensors() -> None:
    with pytest.raises(NetworkError, match="no tensors"):
        Network.from_opt_einsum([], [], {})


@pytest.mark.parametrize(
    ("equation", "shapes", "culprit"),
    [
        ("a->a->a", [(2,)], "->"),
        ("...a->a", [(2,)], r"\.\.\."),
        ("ab,bc->a.c", [(2, 3), (3, 4)], r"'\.'"),
        ("a-b,bc", [(2, 3), (3, 4)], "'-'"),
        ("ab,\tbc", [(2, 3), (3, 4)], r"'\\t'"),
    ],
)
def test_unparseable_equation(equation: str, shapes: list[tuple[int, ...]], culprit: str) -> None:
    with pytest.raises(NetworkError, match=culprit) as err:
        Network.from_einsum(equation, *shapes)
    assert repr(equation) in str(err.value)


def test_equation_must_be_a_string() -> None:
    with pytest.raises(NetworkError, match="string"):
        Network.from_einsum(3, (2,))  # type: ignore[arg-type]


def test_rank_mismatch_names_the_operand() -> None:
    with pytest.raises(NetworkError, match="operand 1") as err:
        Network.from_einsum("ab,bc->ac", (2, 3), (3,))
    assert "'bc'" in str(err.value)
    with pytest.raises(NetworkError, match="operand 0"):
        Network.from_einsum("ab,bc->ac", (2, 3, 4), (3, 4))


def test_operand_count_mismatch() -> None:
    with pytest.raises(NetworkError, match=r"2 operand.*1 shape"):
        Network.from_einsum("ab,bc->ac", (2, 3))
    with pytest.raises(NetworkError, match=r"2 operand.*3 shape"):
        Network.from_einsum("ab,bc->ac", (2, 3), (3, 4), (4,))


def test_missing_file(tmp_path: Path) -> None:
    file = tmp_path / "absent.json"
    with pytest.raises(NetworkError) as err:
        Network.from_json(file)
    assert str(file) in str(err.value)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param('{"inputs": [["a"]], ', id="truncated"),
        pytest.param("not json at all", id="not-json"),
        pytest.param("", id="empty"),
    ],
)
def test_malformed_json_file(tmp_path: Path, text: str) -> None:
    file = tmp_path / "bad.json"
    file.write_text(text, encoding="utf-8")
    with pytest.raises(NetworkError, match="malformed JSON") as err:
        Network.from_json(file)
    assert str(file) in str(err.value)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param('{"tensors": [["a"]]}', id="unknown-keys"),
        pytest.param("[1, 2]", id="not-an-object"),
        pytest.param('{"format_string": "ab,bc->ac"}', id="eb-without-shapes"),
        pytest.param('{"format_string": "ab,bc->ac", "shapes": [[2, 3], [4, 5]]}', id="eb-two-sizes"),
        pytest.param('{"inputs": "ab", "output": [], "size_dict": {"a": 2}}', id="ctg-inputs-not-list"),
        pytest.param('{"inputs": [["a", "b"]], "output": [], "size_dict": {"a": 2}}', id="ctg-size-missing"),
        pytest.param('{"format": "tnplan.network/1", "inputs": [["a"]], "output": []}', id="own-without-sizes"),
        # The next four slip past validation as TypeError/OverflowError/ValueError instead of NetworkError.
        pytest.param('{"format_string": "a,b->ab", "shapes": [2, 3]}', id="eb-shapes-not-lists"),
        pytest.param('{"inputs": [1, 2], "output": [], "size_dict": {"a": 2}}', id="ctg-tensors-not-lists"),
        pytest.param('{"inputs": [["a"]], "output": 5, "size_dict": {"a": 2}}', id="ctg-output-not-list"),
        pytest.param('{"inputs": [["a"]], "output": [], "size_dict": {"a": Infinity}}', id="ctg-infinite-size"),
        pytest.param('{"inputs": [["a"]], "output": [], "size_dict": {"a": NaN}}', id="ctg-nan-size"),
    ],
)
def test_wrong_json_schema(tmp_path: Path, text: str) -> None:
    file = tmp_path / "schema.json"
    file.write_text(text, encoding="utf-8")
    with pytest.raises(NetworkError) as err:
        Network.from_json(file)
    assert str(file) in str(err.value)


# ---------------------------------------------------------------------------------------- property

LABELS = ["a", "b", "c", "d", "1", 1, 2]  # includes the str "1" and the int 1, which JSON must keep apart


@st.composite
def small_networks(draw: st.DrawFn) -> tuple[list[list[object]], list[object], dict[object, int]]:
    n = draw(st.integers(1, 5))
    inputs = [draw(st.lists(st.sampled_from(LABELS), max_size=4)) for _ in range(n)]
    used = list(dict.fromkeys(lab for t in inputs for lab in t))
    sizes = {lab: draw(st.integers(1, 4)) for lab in used}
    output = draw(st.permutations(used)) if used else []
    output = output[: draw(st.integers(0, len(output)))]
    return inputs, list(output), sizes


@settings(max_examples=100, deadline=None)
@given(small_networks())
def test_json_round_trip_property(spec: tuple[list[list[object]], list[object], dict[object, int]]) -> None:
    inputs, output, sizes = spec
    net = Network.from_opt_einsum(inputs, output, sizes)
    back = Network.from_dict(json.loads(net.to_json()))
    assert back == net
    assert [type(lab) for lab in back.labels] == [type(lab) for lab in net.labels]
    assert back.shapes == net.shapes


def test_equation_gives_every_index_its_own_letter_past_the_non_letters() -> None:
    # From U+00C0 on, '×' and '÷' are skipped; 80 open indices once shared two letters.
    inputs = [(f"x{i}", f"y{i}") for i in range(40)]
    labels = [lab for term in inputs for lab in term]
    net = Network.from_opt_einsum(inputs, labels, dict.fromkeys(labels, 1))
    out = net.equation.split("->")[1]
    assert len(out) == len(set(out)) == 80 and all(ch.isalpha() for ch in out)


def test_from_einsum_refuses_arrays_absurd_sizes_briefly_and_reads_a_lone_scalar() -> None:
    with pytest.raises(NetworkError, match=r"operand 0 is an array; .* pass its \.shape") as caught:
        Network.from_einsum("ab,bc->ac", np.zeros((64, 64)), np.zeros((64, 8)))
    assert len(str(caught.value)) < 100
    with pytest.raises(NetworkError, match=r"sizes above 2\*\*62"):
        Network.from_einsum("ab,bc->", (2**64, 2), (2, 2))
    with pytest.raises(NetworkError) as caught:
        Network.from_einsum("ab->", (np.arange(1000), 2))
    assert len(str(caught.value)) < 120
    scalar = Network.from_einsum("->", ())  # numpy's reading: one scalar operand
    assert scalar.num_tensors == 1 and scalar.output == ()
    with pytest.raises(NetworkError, match="has no operands"):
        Network.from_einsum("")


def test_a_label_no_utf8_file_can_hold_is_refused_when_written() -> None:
    net = Network.from_einsum("\ud800b,bc->\ud800c", (2, 3), (3, 4))
    with pytest.raises(NetworkError, match="is not valid unicode; rename it"):
        net.to_json()
    with pytest.raises(NetworkError, match="is not valid unicode"):
        tnplan.plan(net, cache=False).to_json()
