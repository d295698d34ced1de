import pytest

from backend.catalog import Catalog, normalize_title, split_year
from backend.types import Item
from tests.conftest import make_items


def test_normalize_title_handles_articles_years_and_accents():
    assert normalize_title("Usual Suspects, The (1995)") == "the usual suspects"
    assert normalize_title("Amélie") == "amelie"
    assert split_year("Heat  (1995)") == ("Heat", 1995)
    assert split_year("Heat") == ("Heat", None)


def test_search_prefers_exact_title_and_year():
    catalog = Catalog(make_items())
    assert catalog.match("Heat (1986)") == "6"
    assert catalog.match("heat (1995)") == "1"
    assert catalog.match("The Usual Suspect") == "3"  # typo still matches
    assert catalog.match("Completely Unknown Film") is None


def test_item_text_is_pecrs_style():
    catalog = Catalog(make_items())
    text = catalog.item_text("1")
    assert text.split(" [SEP] ")[:4] == [
        "Heat (1995)",
        "Al Pacino, Robert De Niro",
        "Michael Mann",
        "Crime, Thriller",
    ]
    assert catalog.item_text("1", title_only=True) == "Heat (1995)"
    # Dropped fields are emptied in place, so the layout is the one the model was trained on.
    kept = catalog.item_text("1", drop=("actors", "directors", "plot")).split(" [SEP] ")
    assert kept == ["Heat (1995)", "", "", "Crime, Thriller", ""]
    with pytest.raises(ValueError, match="unknown item fields"):
        catalog.item_text("1", drop=("budget",))


def test_filters_and_duplicates():
    catalog = Catalog(make_items())
    assert catalog.with_genre("sci-fi") == ["4", "5"]
    try:
        Catalog(make_items() + make_items()[:1])
    except ValueError as err:
        assert "duplicate item id '1'" in str(err)
    else:
        raise AssertionError("duplicate ids must be rejected")


def test_a_catalog_fills_missing_cast_and_plot_from_the_same_film_elsewhere():
    donor = Catalog(make_items())
    bare = Catalog(
        [
            Item(id="m1", title="Heat", year=1995, genres=("Action",)),  # same film
            Item(id="m2", title="Heat", year=1972, genres=("Action",)),  # same name, another year
            Item(id="m3", title="Alien", year=1979, description="Its own plot."),
        ],
        name="bare",
    )
    filled, count = bare.filled_from(donor)
    assert count == 1 and filled.name == "bare"
    assert filled["m1"].people == donor["1"].people
    assert filled["m1"].description == donor["1"].description
    assert filled["m1"].genres == ("Action",)  # the serving catalog's own fields stay
    assert filled["m2"].description == "" and not filled["m2"].people
    assert filled["m3"].description == "Its own plot."
    assert bare["m1"].description == ""  # the original is unchanged
