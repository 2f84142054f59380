"""Topic suggestions for the subscribe page: the phrases that recur across stored papers (their
ai_keywords, and two- and three-word phrases of their titles). Pure: papers in, phrases out."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

STOPWORDS = frozenset(
    """a an and are as at be by for from how in into is it its of on or our the their this to
    toward towards via vs what when where which who why with without we you your can do does
    using use based new via large small more less than not all any one two three through under
    over beyond between across study studies approach approaches method methods towards""".split()
)
# Title words too generic to make a topic on their own or at the edge of a phrase.
GENERIC = frozenset(
    """model models learning data framework system systems task tasks results paper analysis
    benchmark benchmarks evaluation efficient effective improving improved improve scalable
    simple robust general unified novel""".split()
)
WORD = re.compile(r"[A-Za-z][A-Za-z0-9\-]*")


def _phrases(title: str) -> set[str]:
    words = [w.lower() for w in WORD.findall(title)]
    found: set[str] = set()
    for size in (2, 3):
        for start in range(len(words) - size + 1):
            gram = words[start : start + size]
            if any(w in STOPWORDS for w in gram) or any(len(w) < 3 for w in gram):
                continue
            if gram[0] in GENERIC or all(w in GENERIC for w in gram):
                continue
            found.add(" ".join(gram))
    return found


def suggest_topics(
    papers: Iterable[tuple[str, Sequence[str]]], *, limit: int = 24, min_count: int = 2
) -> list[str]:
    """The most frequent phrases over (title, ai_keywords) pairs, each counted once a paper.

    Keywords chosen for a paper count double (they were picked as its topics); a three-word
    phrase replaces the two-word phrases inside it when it is nearly as frequent.
    """
    counts: Counter[str] = Counter()
    for title, keywords in papers:
        for phrase in _phrases(title):
            counts[phrase] += 1
        for keyword in {" ".join(k.lower().split()) for k in keywords if k and len(k) <= 60}:
            counts[keyword] += 2
    ranked = [(p, c) for p, c in counts.most_common() if c >= min_count]
    kept = {phrase for phrase, _ in ranked}
    for phrase, count in ranked:
        for shorter in list(kept):
            if shorter != phrase and shorter in phrase and count * 2 >= counts[shorter]:
                kept.discard(shorter)
    chosen = [phrase for phrase, _ in ranked if phrase in kept][:limit]
    return sorted(chosen)
