"""A-labels (IDNA2008 + UTS #46): every accepted domain has exactly one, and it round-trips."""

from __future__ import annotations

import idna
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from postline.accept.address import is_valid_email
from postline.deliver.render_headers import addr_spec
from postline.model.domain import a_label, domain_key

# Letters and digits from several scripts, joiners, ß/ς, symbols and some upper case.
_CHARS = st.sampled_from(list("abcxyz09-ßςäöüÄÖÜéçñøåłžЖжπΣ日本語한국اب\u200d\u00b7☃Ⅸ"))
_LABEL = st.text(_CHARS, min_size=1, max_size=20)
DOMAINS = st.builds(
    lambda labels, tld: ".".join([*labels, tld]),
    st.lists(_LABEL, min_size=1, max_size=3),
    st.sampled_from(["example", "de", "xn--p1ai"]),
)


@settings(max_examples=500, deadline=None)
@given(DOMAINS)
def test_a_label_round_trips(domain: str) -> None:
    # An ASCII name without xn-- is only lower-cased (its syntax is checked elsewhere).
    assume(not domain.isascii())
    encoded = a_label(domain)
    if encoded is None:
        return
    assert encoded.isascii() and encoded == encoded.lower()
    assert a_label(encoded) == encoded  # an A-label is its own key
    unicode = idna.decode(encoded)
    assert a_label(unicode) == encoded  # U-label -> A-label -> U-label -> the same A-label
    assert idna.encode(unicode).decode("ascii") == encoded  # plain IDNA2008 agrees
    assert domain_key(f"bob@{domain}") == domain_key(f"bob@{encoded}") == encoded


@settings(max_examples=500, deadline=None)
@given(DOMAINS)
def test_an_accepted_domain_goes_out_as_its_a_label(domain: str) -> None:
    address = f"bob@{domain}"
    if not is_valid_email(address):
        return
    encoded = a_label(domain)
    assert encoded is not None
    assert addr_spec(address) == (f"bob@{encoded}", False)  # no SMTPUTF8 for a domain
    assert is_valid_email(f"bob@{encoded}")
