import pytest

from pipeline.core.errors import DataError
from pipeline.domain.dataset import junk_reason, parse_folder_name, parse_photo_name


def test_parse_folder_name() -> None:
    p = parse_folder_name("000001_female_Asian_45")
    assert (p.person_id, p.gender, p.race, p.age) == ("000001", 1, "Asian", 45)
    assert parse_folder_name("003397_Male_Asian_20").gender == 0


@pytest.mark.parametrize(
    "name",
    ["000001_female_Asian", "000001_woman_Asian_45", "abc_female_Asian_45", "000001_female_Asian_x",
     "000001_female_Asian_0", "000001-female-Asian-45", ""],
)  # fmt: skip
def test_unparsable_folder_names_say_why(name: str) -> None:
    with pytest.raises(DataError, match=r"folder name|age"):
        parse_folder_name(name)


@pytest.mark.parametrize(
    ("filename", "mask"),
    [("mask1.jpg", 0), ("mask5.jpeg", 0), ("incorrect_mask.png", 1), ("normal.jpg", 2),
     ("MASK3.JPG", 0), ("Normal.PNG", 2)],
)  # fmt: skip
def test_photo_names_give_mask_codes(filename: str, mask: int) -> None:
    assert parse_photo_name(filename) == mask


@pytest.mark.parametrize(
    ("filename", "reason"),
    [("._mask1.jpg", "sidecar"), (".DS_Store", "junk"), ("Thumbs.db", "junk"),
     ("mask6.jpg", "is not one of"), ("normal.gif", "extension"), ("normal", "extension")],
)  # fmt: skip
def test_bad_photo_names_say_why(filename: str, reason: str) -> None:
    with pytest.raises(DataError, match=reason):
        parse_photo_name(filename)


def test_junk_reason_leaves_real_photos_alone() -> None:
    assert junk_reason("mask1.jpg") is None
    assert "sidecar" in (junk_reason("._normal.jpg") or "")
