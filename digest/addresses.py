"""Which inbox an address reaches: the key of per-target rate limits, never the address mailed."""

from __future__ import annotations

# Providers that ignore dots in the local part (Gmail: "b.o.m.b" and "bomb" are one inbox).
DOTS_IGNORED = frozenset({"gmail.com", "googlemail.com"})
# googlemail.com is the same service under another name.
SAME_AS = {"googlemail.com": "gmail.com"}
MAX_ADDRESS_CHARS = 320


def inbox_key(address: str) -> str:
    """`address` reduced to the inbox the big providers deliver it to: case folded, spaces
    gone, a `+tag` dropped (Gmail, Outlook, Fastmail, iCloud, Proton all deliver
    `name+anything@` to `name@`), and dots dropped where the provider ignores them.

    Over-merging two real inboxes only makes them share a rate limit; under-merging lets one
    inbox be bombed through variants, so the rule leans towards merging.
    """
    value = "".join(address.split()).casefold()[:MAX_ADDRESS_CHARS]
    local, at, domain = value.rpartition("@")
    if not at:
        return value
    domain = domain.rstrip(".")
    domain = SAME_AS.get(domain, domain)
    local = local.strip('"').split("+", 1)[0]
    if domain in DOTS_IGNORED:
        local = local.replace(".", "")
    return f"{local}@{domain}"
