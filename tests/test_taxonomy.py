import pytest

from holisafe.core import taxonomy as tx

PUBLISHED_LABEL_ORDER = [
    "safe",
    "gender",
    "race",
    "religion",
    "harassment",
    "disability_discrimination",
    "drug_related_hazards",
    "property_crime",
    "facial_data_exposure",
    "identity_data_exposure",
    "physical_self_injury",
    "suicide",
    "animal_abuse",
    "obscene_gestures",
    "physical_altercation",
    "terrorism",
    "weapon_related_violence",
    "sexual_content",
    "financial_advice",
    "medical_advice",
]


def test_label_order_is_the_published_one():
    assert list(tx.IMAGE_SAFETY_LABELS) == PUBLISHED_LABEL_ORDER
    assert tx.IMAGE_SAFETY_LABELS[tx.SAFE_LABEL] == "safe"


def test_every_subcategory_is_an_image_label_and_vice_versa():
    assert len(tx.SUBCATEGORIES) == 19
    assert set(tx.SUBCATEGORIES) == set(tx.IMAGE_SAFETY_LABELS[1:])
    assert len(tx.CATEGORIES) == 7


@pytest.mark.parametrize("name", PUBLISHED_LABEL_ORDER)
def test_label_lookups_round_trip(name):
    assert tx.label_name(tx.label_index(name)) == name


@pytest.mark.parametrize("bad", [-1, 20, 3.0, True, "3", None])
def test_label_name_rejects_bad_indices(bad):
    with pytest.raises(tx.TaxonomyError):
        tx.label_name(bad)


def test_unknown_names_are_rejected():
    with pytest.raises(tx.TaxonomyError, match="unknown subcategory"):
        tx.category_of("arson")
    with pytest.raises(tx.TaxonomyError, match="unknown image safety label"):
        tx.label_index("unsafe")


def test_category_of():
    assert tx.category_of("terrorism") == "violence"
    assert tx.category_of("sexual_content") == "sexual_content"
    assert tx.category_of("medical_advice") == "specialized_advice"
    assert {tx.category_of(s) for s in tx.SUBCATEGORIES} == set(tx.CATEGORIES)


def test_types_carry_their_safeness():
    uuu, usu, suu, ssu, sss = (tx.TYPES[c] for c in ("UUU", "USU", "SUU", "SSU", "SSS"))
    assert (uuu.image_safe, uuu.query_safe, uuu.combined_safe) == (False, False, False)
    assert (usu.image_safe, usu.query_safe, usu.combined_safe) == (False, True, False)
    assert (suu.image_safe, suu.query_safe, suu.combined_safe) == (True, False, False)
    assert (ssu.image_safe, ssu.query_safe, ssu.combined_safe) == (True, True, False)
    assert (sss.image_safe, sss.query_safe, sss.combined_safe) == (True, True, True)
    assert [t.expected_behaviour for t in (uuu, usu, suu, ssu)] == ["refuse"] * 4
    assert sss.expected_behaviour == "answer" and sss.combined_label == "safe"
    assert set(tx.UNSAFE_TYPE_CODES) == {"UUU", "USU", "SUU", "SSU"}


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("UUU", "UUU"),
        ("uuu", "UUU"),
        ("U_I U_T", "UUU"),
        ("UiUt", "UUU"),
        ("U_I S_T", "USU"),
        ("UiSt", "USU"),
        ("S_I U_T", "SUU"),
        ("SSU", "SSU"),
        ("S_I S_T→U", "SSU"),
        ("S_I S_T → S", "SSS"),
        ("S_I S_T->U", "SSU"),
        ("SiSt→S", "SSS"),
        ("$S_I S_T \\to U$", "SSU"),
        ("S_{I} S_{T} \\rightarrow S", "SSS"),
        ("U_I U_T→U", "UUU"),
    ],
)
def test_parse_type_accepts_paper_notations(text, code):
    assert tx.parse_type(text).code == code


@pytest.mark.parametrize(
    "text", ["", "USS", "SUS", "UU", "UUUU", "S_I S_T", "U_I U_T→S", "X_I U_T", "unsafe", "S_T S_I"]
)
def test_parse_type_rejects_everything_else(text):
    with pytest.raises(tx.TaxonomyError):
        tx.parse_type(text)


def test_parse_type_rejects_non_strings():
    with pytest.raises(tx.TaxonomyError, match="must be a string"):
        tx.parse_type(3)


def test_ambiguous_safe_pair_explains_itself():
    with pytest.raises(tx.TaxonomyError, match="ambiguous"):
        tx.parse_type("S_I S_T")
