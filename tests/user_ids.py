"""The user ids the library accepts, as a Hypothesis strategy shared by the suites."""

from __future__ import annotations

import unicodedata

from hypothesis import strategies as st

from penny_cache.user_ids import is_noncharacter

__all__ = ["valid_user_ids"]


def _acceptable(ch: str) -> bool:
    return ch != "\ufffd" and not is_noncharacter(ch)


# At most 64 code points of at most 4 UTF-8 bytes each: always within the 256-byte limit;
# no control, format or surrogate code points, no noncharacters or U+FFFD, and in NFC
# (normalising can lengthen an id, hence the filter on the size afterwards).
valid_user_ids = (
    st.text(
        alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Cf")).filter(_acceptable),
        min_size=1,
        max_size=64,
    )
    .map(lambda text: unicodedata.normalize("NFC", text))
    .filter(lambda text: 0 < len(text) <= 64)
)
