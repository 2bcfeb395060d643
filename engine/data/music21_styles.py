"""Style labels of music21 corpus works, and the text folding they rest on.

Style labels (lowercase snake_case, one per composer or folk collection):
  * a composer with a corpus folder of their own gets that folder's label wherever they
    appear ("bach", "beethoven", "palestrina", "cpe_bach", "schumann_clara", ...);
    `normalize_style` maps metadata spellings ("J.S. Bach", "Bach, Johann Sebastian")
    onto them.
  * multi-composer collections keep a collection label: "trecento" (mostly anonymous or
    one-work composers; Ciconia's works there stay "ciconia") and "lead_sheet".
  * folk collections are labelled by tradition, a handful of labels: "folk_essen"
    (Essen, mostly German-speaking Europe), "folk_chinese" (Essen's han* files),
    "folk_irish" (O'Neill's 1850 and Essen's irl), "folk_scottish" (Aird's Airs and
    Essen's folkHaydn), "folk_american" (Ryan's Mammoth, the American fife book) and
    "folk_english" (Northumbrian minstrelsy, the Nottingham reels).
"""

from __future__ import annotations

import re
import unicodedata
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .music21_corpus import _Entry

# ---------------------------------------------------------------------------------------
# Style labels

# Folder -> label for folders that name one composer or one collection.
_FOLDER_STYLE = {
    "bach": "bach",
    "beach": "beach",
    "beethoven": "beethoven",
    "chopin": "chopin",
    "ciconia": "ciconia",
    "corelli": "corelli",
    "cpebach": "cpe_bach",
    "handel": "handel",
    "haydn": "haydn",
    "johnson_j_r": "johnson",
    "joplin": "joplin",
    "josquin": "josquin",
    "leadSheet": "lead_sheet",
    "liliuokalani": "liliuokalani",
    "luca": "luca",
    "lusitano": "lusitano",
    "monteverdi": "monteverdi",
    "mozart": "mozart",
    "palestrina": "palestrina",
    "schoenberg": "schoenberg",
    "schubert": "schubert",
    "schumann_clara": "schumann_clara",
    "schumann_robert": "schumann_robert",
    "trecento": "trecento",
    "verdi": "verdi",
    "weber": "weber",
    "webern": "webern",
    "essenFolksong": "folk_essen",
    "oneills1850": "folk_irish",
    "airdsAirs": "folk_scottish",
    "ryansMammoth": "folk_american",
    "nottingham-dataset": "folk_english",
}
# Files inside a folk folder whose tradition differs from the folder's.
_FILE_STYLE = (
    ("essenFolksong/han", "folk_chinese"),
    ("essenFolksong/irl", "folk_irish"),
    ("essenFolksong/folkHaydn", "folk_scottish"),  # the Scottish songs Haydn arranged
    ("miscFolk/americanfife", "folk_american"),
    ("miscFolk/northumbrian", "folk_english"),
    ("miscFolk/", "folk_english"),
)
# Composer spellings -> label; first match wins, so specific names precede general ones.
_COMPOSER_ALIASES: tuple[tuple[str, str], ...] = (
    ("cpe_bach", r"c\s*\.?\s*p\s*\.?\s*e\s*\.?\s*bach|carl\s+philipp\s+emanuel|cpe_?bach"),
    ("bach", r"\bbach\b|j\s*\.?\s*s\s*\.?\s*bach|johann\s+sebastian"),
    ("schumann_clara", r"clara\s+(wieck\s+)?schumann|schumann[\s,_]+clara|clara\s+wieck"),
    ("schumann_robert", r"schumann"),
    ("beethoven", r"beethoven"),
    ("mozart", r"mozart"),
    ("haydn", r"haydn"),
    ("handel", r"handel|haendel"),
    ("palestrina", r"palestrina"),
    ("monteverdi", r"monteverdi"),
    ("josquin", r"josquin|des\s+pr[eé]z"),
    ("ciconia", r"ciconia"),
    ("chopin", r"chopin"),
    ("corelli", r"corelli"),
    ("schubert", r"schubert"),
    ("schoenberg", r"schoenberg|schonberg"),
    ("webern", r"webern"),
    ("weber", r"\bweber\b"),
    ("verdi", r"verdi"),
    ("joplin", r"joplin"),
    ("beach", r"\bbeach\b"),
    ("johnson", r"rosamond\s+johnson|johnson_j_r"),
    ("liliuokalani", r"liliuokalani"),
    ("lusitano", r"lusitano"),
)
_STYLE_WORD = re.compile(r"[a-z0-9]+")
_TRIM_PATTERNS = (r"\(.*?\)", r"\\\w+", r"\b1[0-9]{3}\b.*$", r"\bop\b.*$")


def normalize_style(name: str) -> str | None:
    """One lowercase snake_case label per composer, however the name is spelled.

    "J.S. Bach", "Bach, Johann Sebastian" and "bach" all give "bach"; an unknown name
    gives its surname ("Francesco Landini" -> "landini"); anonymous/empty gives None.
    """
    text = _ascii_fold(name).lower().replace("_", " ")
    if not text.strip():
        return None
    for label, pattern in _COMPOSER_ALIASES:
        if re.search(pattern, text):
            return label
    if re.search(r"\banon", text) or text.strip() in {"trad", "traditional", "unknown"}:
        return None
    return _surname_label(text)


def _surname_label(text: str) -> str | None:
    """Surname of a free-form name: before a comma, else the last word."""
    text = text.split("\n", 1)[0]
    for pattern in _TRIM_PATTERNS:
        text = re.sub(pattern, " ", text)
    if "," in text:
        text = text.split(",", 1)[0]
    words = [w for w in _STYLE_WORD.findall(text) if len(w) > 1 or w.isdigit()]
    return words[-1] if words else None


def _style_for_entry(e: _Entry) -> str:
    for prefix, label in _FILE_STYLE:
        if e.rel.startswith(prefix):
            return label
    if e.folder == "trecento" and normalize_style(e.composer) == "ciconia":
        return "ciconia"
    if e.folder in _FOLDER_STYLE:
        return _FOLDER_STYLE[e.folder]
    return normalize_style(e.composer) or _snake(e.folder)


def _snake(text: str) -> str:
    text = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", _ascii_fold(text))
    return "_".join(_STYLE_WORD.findall(text.lower())) or "unknown"


def _ascii_fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text or "")
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _norm_text(text: str) -> str:
    return " ".join(_STYLE_WORD.findall(_ascii_fold(text).lower()))
