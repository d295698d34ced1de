"""Data loaders on small hand-made fixtures, malformed inputs, and (when present) the real data."""

from __future__ import annotations

import json
import re
import shutil
from itertools import pairwise
from pathlib import Path

import pytest

from backend.data import DATASETS, DataFormatError, load_dataset
from backend.data.inspired import load_inspired, raw_item_id
from backend.data.movielens import KnowledgeGraph, default_root, load_movielens_100k, readable_title
from backend.data.redial import load_redial

FIXTURES = Path(__file__).resolve().parent / "fixtures"
REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def copy_fixture(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURES / name, tmp_path / name))


def replace_line(path: Path, line_no: int, text: str) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[line_no - 1] = text
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def assert_format_error(
    err: pytest.ExceptionInfo[DataFormatError], file: str, line: int, problem: str
) -> None:
    assert Path(err.value.path).name == file
    assert err.value.line == line
    assert f"{file}:{line}: " in str(err.value)
    assert problem in str(err.value)


# ----------------------------------------------------------------------------- ReDial


@pytest.fixture(scope="module")
def redial():
    return load_redial(FIXTURES / "redial")


def test_redial_catalog_merges_csv_and_id2info(redial):
    catalog = redial.catalog
    # 5 csv movies, 1 only in id2info, 1 only in a dialogue's movieMentions.
    assert catalog.ids == ["111776", "151656", "100493", "192131", "102513", "300001", "400001"]
    troopers = catalog["111776"]
    assert (troopers.title, troopers.year, troopers.genres) == (
        "Super Troopers",
        2001,
        ("comedy", "crime"),
    )
    assert troopers.people == {
        "director": ("Jay Chandrasekhar",),
        "star": ("Jay Chandrasekhar", "Kevin Heffernan"),
        "writer": ("Broken Lizard",),
    }
    assert troopers.description.startswith("Five Vermont")
    assert troopers.extra == {"mentions": 5, "imdb_id": "tt0247745"}
    assert catalog["151656"].title == "Police Academy"  # double space collapsed
    assert catalog["151656"].people == {"star": ("Steve Guttenberg",)}  # empty roles dropped
    assert catalog["100493"].display_title == "Why Him? (2016)"  # %3F decoded
    assert (
        catalog["102513"].display_title == "O Brother, Where Art Thou? (2000)"
    )  # quoted csv field
    assert (catalog["192131"].title, catalog["192131"].year) == ("American Pie", None)
    assert catalog["300001"].display_title == "Heat (1995)"
    assert catalog["400001"].display_title == "Police Academy 2 (1985)"


def test_redial_test_split_turns_roles_and_mentions(redial):
    test = redial.split("test")
    assert [d.id for d in test] == ["20001", "20041", "20047"]  # the blank line is skipped
    first = test[0]
    assert first.user_id == "956"
    assert [(t.role, t.text, t.items) for t in first.turns] == [
        ("user", "Hi I am looking for a movie like Super Troopers (2001)", ["111776"]),
        ("system", "You should watch Police Academy (1984)", ["151656"]),
        ("user", "Is that a great one? I have seen American Pie", ["192131"]),
        (
            "system",
            "Yes Police Academy (1984) is funny and so is Police Academy 2 (1985) "
            "Also @999999 and Police Academy (1984) again",
            ["151656", "400001"],
        ),
    ]
    assert first.meta["conversationId"] == "20001"
    assert first.meta["format"] == "official"
    assert first.meta["initiatorQuestions"]["151656"] == {"suggested": 1, "seen": 0, "liked": 2}
    assert first.meta["respondentQuestions"] == {}  # [] in the file
    # The initiator (seeker) is the user even when the respondent speaks first.
    assert [t.role for t in test[1].turns] == ["system", "user", "system"]
    assert test[1].user_id == "13"
    assert test[2].turns[1].text == "O Brother, Where Art Thou? (2000) or Why Him? (2016)"
    assert test[2].turns[1].items == ["102513", "100493"]


def test_redial_train_dev_split_is_deterministic_and_disjoint(redial):
    train, dev = redial.split("train"), redial.split("dev")
    assert [d.id for d in dev] == ["96"]
    assert [d.id for d in train] == ["95", "97", "98", "99", "100", "101", "102", "103", "104"]
    assert {d.id for d in train}.isdisjoint(d.id for d in dev)
    again = load_redial(FIXTURES / "redial")
    assert [d.id for d in again.split("dev")] == ["96"]
    assert all(d.meta["format"] == "cfcrs" for d in train + dev)
    # An empty seeker message disappears, so the recommender's messages around it merge.
    with_gap = next(d for d in train if d.id == "99")
    assert [(t.role, t.text, t.items) for t in with_gap.turns] == [
        ("system", "Hi, what kind of movies do you like?", []),
        ("user", "Something like Super Troopers (2001) please", ["111776"]),
        ("system", "Try Police Academy (1984) or Why Him? (2016)", ["151656", "100493"]),
    ]


def test_redial_stats(redial):
    stats = redial.stats()
    assert stats["dialogues"] == 13
    assert stats["items"] == 7
    assert (stats["split:train"], stats["split:dev"], stats["split:test"]) == (9, 1, 3)


def test_redial_broken_json_line(tmp_path):
    root = copy_fixture("redial", tmp_path)
    replace_line(
        root / "test_data.jsonl", 2, '{"movieMentions": {"300001": "Heat (1995)"}, "messages": ['
    )
    with pytest.raises(DataFormatError) as err:
        load_redial(root)
    assert_format_error(err, "test_data.jsonl", 2, "invalid JSON")


def test_redial_message_without_text(tmp_path):
    root = copy_fixture("redial", tmp_path)
    path = root / "test_data.jsonl"
    record = json.loads(path.read_text().splitlines()[3])
    del record["messages"][1]["text"]
    replace_line(path, 4, json.dumps(record))
    with pytest.raises(DataFormatError) as err:
        load_redial(root)
    assert_format_error(err, "test_data.jsonl", 4, "message 2 has no 'text'")


def test_redial_unknown_sender(tmp_path):
    root = copy_fixture("redial", tmp_path)
    path = root / "train_subset_1000_cfcrs.jsonl"
    record = json.loads(path.read_text().splitlines()[0])
    record["messages"][0]["senderWorkerId"] = 7
    replace_line(path, 1, json.dumps(record))
    with pytest.raises(DataFormatError) as err:
        load_redial(root)
    assert_format_error(
        err, "train_subset_1000_cfcrs.jsonl", 1, "neither the initiator nor the respondent"
    )


def test_redial_csv_non_integer_id(tmp_path):
    root = copy_fixture("redial", tmp_path)
    replace_line(root / "movies_with_mentions.csv", 4, "abc,Some Movie (2000),1")
    with pytest.raises(DataFormatError) as err:
        load_redial(root)
    assert_format_error(err, "movies_with_mentions.csv", 4, "movieId 'abc' is not an integer")


def test_redial_broken_id2info(tmp_path):
    root = copy_fixture("redial", tmp_path)
    replace_line(root / "id2info.json", 3, '  "151656": {"name": "Police Academy (1984)",, }')
    with pytest.raises(DataFormatError) as err:
        load_redial(root)
    assert_format_error(err, "id2info.json", 3, "invalid JSON")


# ----------------------------------------------------------------------------- MovieLens


def test_readable_title():
    assert readable_title("Usual Suspects, The") == "The Usual Suspects"
    assert readable_title("Good, The Bad and The Ugly, The") == "The Good, The Bad and The Ugly"
    assert (
        readable_title("Blue Angel, The (Blaue Engel, Der)") == "The Blue Angel (Blaue Engel, Der)"
    )
    assert readable_title("Misérables, Les") == "Misérables, Les"  # only English articles move
    assert readable_title("Toy Story") == "Toy Story"


def test_movielens_fixture():
    ds = load_movielens_100k(FIXTURES / "ml-100k")
    assert ds.name == "movielens-100k"
    assert ds.splits == {}
    assert ds.catalog.ids == ["1", "12", "113", "267", "9"]
    assert ds.catalog["12"].display_title == "The Usual Suspects (1995)"
    assert ds.catalog["1"].genres == ("Animation", "Children's", "Comedy")
    assert (ds.catalog["267"].title, ds.catalog["267"].year, ds.catalog["267"].genres) == (
        "unkonwn",
        None,
        (),
    )
    # Ratings at the same time (items 12 and 9 at t=50) go by item id, numerically.
    user1 = ds.histories["1"]
    assert [(i.item_id, i.rating, i.time) for i in user1.interactions] == [
        ("9", 4.0, 50.0),
        ("12", 2.0, 50.0),
        ("1", 5.0, 100.0),
        ("113", 3.0, 200.0),
    ]
    assert [i.item_id for i in user1.liked] == ["9", "1"]
    assert [i.item_id for i in user1.disliked] == ["12"]
    user2 = ds.histories["2"]
    assert [i.item_id for i in user2.interactions] == ["1", "267"]
    assert ([i.item_id for i in user2.liked], [i.item_id for i in user2.disliked]) == (
        ["1"],
        ["267"],
    )
    assert ds.extra["users"]["2"] == {
        "age": "47",
        "gender": "F",
        "occupation": "other",
        "zip_code": "00002",
    }
    kg = ds.extra["kg"]
    assert isinstance(kg, KnowledgeGraph)
    assert kg.item_entity == {"1": "m.toy", "12": "m.suspects"}
    assert kg.triples[0] == ("m.toy", "film.film.directed_by", "m.lasseter")
    assert ds.stats()["interactions"] == 6


def test_movielens_wrong_column_count(tmp_path):
    root = copy_fixture("ml-100k", tmp_path)
    replace_line(root / "ml-100k.inter", 5, "1\t9\t4")
    with pytest.raises(DataFormatError) as err:
        load_movielens_100k(root)
    assert_format_error(err, "ml-100k.inter", 5, "expected 4 tab-separated columns, got 3")


def test_movielens_bad_rating_and_unknown_item(tmp_path):
    root = copy_fixture("ml-100k", tmp_path)
    replace_line(root / "ml-100k.inter", 3, "1\t12\tgood\t50")
    with pytest.raises(DataFormatError) as err:
        load_movielens_100k(root)
    assert_format_error(err, "ml-100k.inter", 3, "rating 'good' is not a number")
    replace_line(root / "ml-100k.inter", 3, "1\t4242\t2\t50")
    with pytest.raises(DataFormatError) as err:
        load_movielens_100k(root)
    assert_format_error(err, "ml-100k.inter", 3, "item_id 4242 is not in the item file")


def test_movielens_missing_recbole_gives_install_hint(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps recbole"):
        default_root()


# ----------------------------------------------------------------------------- INSPIRED


def test_inspired_pecrs_recovers_titles_from_aligned_raw_dialogues():
    ds = load_inspired(FIXTURES / "inspired")
    assert ds.name == "inspired"
    assert sorted(ds.catalog.ids, key=int) == ["7", "10", "22", "45", "500"]
    assert ds.catalog["45"].display_title == "Joker (2019)"
    assert ds.catalog["10"].display_title == "Hustlers (2019)"
    assert ds.catalog["7"].display_title == "Office Space (1999)"  # from the repaired movie_dict
    # The PECRS test dialogue differs from the raw one, so it is not aligned and 22 stays unknown.
    assert ds.catalog["22"].title == "INSPIRED movie 22"
    assert ds.catalog["22"].extra == {"title_known": False}
    assert ds.extra["titles_recovered"] == 3

    dev = ds.split("dev")
    assert dev[0].meta == {"raw_dialog_id": "20191202-000001_1_live.pkl"}
    assert [(t.role, t.text, t.items) for t in dev[0].turns] == [
        ("system", "Hi! What movies do you like?", []),
        ("user", 'I loved "Hustlers (2019)" . Anything similar?', ["10"]),
        ("system", "You should watch Joker (2019), it is like Heat (1995).", ["45"]),
        ("user", "Sounds good", []),
    ]
    assert ds.split("test")[0].meta == {}
    train = ds.split("train")[0]
    assert train.user_id is None
    assert [(t.text, t.items) for t in train.turns] == [
        ("Have you seen Joker (2019) or [MOVIE_ID]?", ["45", "500"]),
        ("Only Joker (2019), twice: Joker (2019)", ["45"]),
    ]


def test_inspired_raw():
    ds = load_inspired(FIXTURES / "inspired", source="raw")
    assert ds.name == "inspired-raw"
    assert set(ds.splits) == {"dev", "test"}
    assert raw_item_id("The Irishman (2019)") == "the-irishman-2019"
    assert ds.catalog.ids == [
        "hustlers-2019",
        "joker-2019",
        "heat-1995",
        "office-space-1999",
        "frozen-ii-2019",
    ]
    first, second = ds.split("dev")
    assert first.id == "20191202-000001_1_live.pkl"
    assert [(t.role, t.text, t.items) for t in first.turns] == [
        ("system", "Hi! What movies do you like?", []),
        ("user", 'I loved "Hustlers" . Anything similar?', ["hustlers-2019"]),
        ("system", "You should watch Joker, it is like Heat.", ["joker-2019", "heat-1995"]),
        ("user", "Sounds good", []),
    ]
    assert first.meta["labels"] == [
        ["opinion_inquiry"],
        [],
        ["credibility", "personal_opinion"],
        [],
    ]
    assert (first.meta["case"], first.meta["coarse_label"], first.meta["trailer_id"]) == (
        "accept_rating_good",
        "accept_new",
        "yt0001",
    )
    # "nan" outcome cells are skipped in favour of the dialogue's other rows.
    assert (second.meta["case"], second.meta["trailer_id"]) == ("reject", "yt0002")


def test_inspired_raw_wrong_column_count(tmp_path):
    root = copy_fixture("inspired", tmp_path)
    path = root / "raw" / "dialog_data" / "dev.tsv"
    fields = path.read_text().splitlines()[2].split("\t")
    replace_line(path, 3, "\t".join(fields[:-2]))
    with pytest.raises(DataFormatError) as err:
        load_inspired(root, source="raw")
    assert_format_error(err, "dev.tsv", 3, "expected 19 tab-separated columns, got 17")


def test_inspired_pecrs_placeholder_count_mismatch(tmp_path):
    root = copy_fixture("inspired", tmp_path)
    path = root / "pecrs_processed" / "train.json"
    data = json.loads(path.read_text())
    data[0]["dialogue"][1]["movie_ids"] = [45]
    path.write_text(json.dumps(data))
    with pytest.raises(
        DataFormatError,
        match=r"train\.json: dialogue 0, utterance 1: 2 \[MOVIE_ID\] placeholders but 1",
    ):
        load_inspired(root)


# ----------------------------------------------------------------------------- registry


def test_load_dataset_names_cache_and_errors(tmp_path, monkeypatch):
    assert DATASETS == (
        "movielens-100k",
        "movielens-100k-heldout",
        "llm-redial",
        "redial",
        "inspired",
        "inspired-raw",
        "u-need",
    )
    first = load_dataset("redial", FIXTURES / "redial")
    assert load_dataset("redial", FIXTURES / "redial" / ".." / "redial") is first
    monkeypatch.setenv("CRS_DATA_DIR", str(FIXTURES))
    assert load_dataset("redial") is first
    assert load_dataset("inspired-raw").name == "inspired-raw"
    monkeypatch.setenv("CRS_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="pass --data-dir or set CRS_DATA_DIR"):
        load_dataset("inspired")
    with pytest.raises(ValueError, match="unknown dataset 'imdb'"):
        load_dataset("imdb")


# ----------------------------------------------------------------------------- real data


def test_real_redial():
    root = REAL_DATA / "redial"
    if not (root / "test_data.jsonl").exists():
        pytest.skip(f"real ReDial data not found at {root}")
    ds = load_dataset("redial", root)
    assert len(ds.split("test")) == 1342
    assert (len(ds.split("train")), len(ds.split("dev"))) == (900, 100)
    assert len(ds.catalog) == 6924
    assert sum(len(d.turns) for d in ds.split("test")) == 15704  # as PECRS merges them
    # Every @movieId of the official test split resolves to a catalog title.
    assert not any(re.search(r"@\d", t.text) for d in ds.split("test") for t in d.turns)


def test_real_movielens():
    try:
        root = default_root()
    except FileNotFoundError:
        pytest.skip("recbole is not installed")
    ds = load_dataset("movielens-100k", root)
    assert len(ds.histories) == 943
    assert len(ds.catalog) == 1682
    assert sum(len(h.interactions) for h in ds.histories.values()) == 100_000
    assert ds.catalog["12"].display_title == "The Usual Suspects (1995)"
    assert all(a.time <= b.time for h in ds.histories.values() for a, b in pairwise(h.interactions))


def test_real_inspired():
    root = REAL_DATA / "inspired"
    if not (root / "pecrs_processed" / "train.json").exists():
        pytest.skip(f"real INSPIRED data not found at {root}")
    ds = load_dataset("inspired", root)
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 801, "dev": 99, "test": 99}
    assert len(ds.catalog) == 1662
    assert ds.extra["titles_recovered"] >= 450
    raw = load_dataset("inspired-raw", root)
    assert {k: len(v) for k, v in raw.splits.items()} == {"dev": 99, "test": 99}
