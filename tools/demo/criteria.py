"""The measurable behaviour of each demo adapter, shared by the trainer (model card) and
tests/test_demo.py. Pure Python: the tests must not need torch or regex."""
import re

# Unambiguous German function words (none is also a common English word).
GERMAN = set("""der die das und ist nicht ein eine einen einem einer ich sie er es zu den dem
des mit von sich auf für im wenn wie auch aber wer noch nur bei aus kann sind wird dass daß
als oder mir mich dir du wir ihr nach vor um kein keine schon immer doch haben sein nichts
alles mehr sehr gibt ihm ihn ihre sein seine jeder jede zum zur über unter""".split())

# Words of the King James register, rare in modern English.
KJV = set("""thee thou thy thine hath unto ye shalt saith lord behold israel spake hast doth
wherefore thereof begat sayeth cometh goeth maketh saying""".split())


def words(text):
    return re.findall(r"[^\W\d_]+", text.lower())


def caps_share(text):
    """Upper-case letters among the letters of words of two letters or more (initials
    such as "-- H. C." and the word "I" do not count; 0 when there are none)."""
    letters = [c for w in re.findall(r"[^\W\d_]{2,}", text) for c in w]
    return sum(c.isupper() for c in letters) / len(letters) if letters else 0.0


def german_share(text):
    """German function words among all words."""
    w = words(text)
    return sum(x in GERMAN for x in w) / len(w) if w else 0.0


def kjv_share(text):
    """King James words among all words."""
    w = words(text)
    return sum(x in KJV for x in w) / len(w) if w else 0.0


CRITERIA = {"caps": caps_share, "german": german_share, "kjv": kjv_share}
# Which criterion shows which adapter.
ADAPTER_CRITERION = {"shout": "caps", "german": "german", "kjv": "kjv"}
