"""Deterministic multilingual text for training test tokenizers and for benchmarks.

Words are built from syllables of many scripts (Latin with accents, Cyrillic, Greek, Arabic,
Hebrew, Devanagari, Thai, CJK, kana, Hangul), mixed with numbers, code, emoji, contractions and
whitespace runs, so trained vocabularies hold real merges for every script.
"""
import random
import unicodedata

LATIN_C = list("bcdfghjklmnprstvwz") + ["ch", "sh", "th", "qu", "ß", "ñ", "ç"]
LATIN_V = list("aeiou") + list("áéíóúàèüöäøå")
CYRILLIC = "абвгдеёжзийклмнопрстуфхцчшщъыьэюя"
GREEK = "αβγδεζηθικλμνξοπρστυφχψωάέήίόύώ"
ARABIC = "ابتثجحخدذرزسشصضطظعغفقكلمنهوي"
HEBREW = "אבגדהוזחטיכלמנסעפצקרשת"
DEVA_C = "कखगघचछजझटठडढणतथदधनपफबभमयरलवशषसह"
DEVA_V = ["", "ा", "ि", "ी", "ु", "ू", "े", "ै", "ो", "ौ", "ं", "्"]
THAI_C = "กขคงจฉชซญดตถทนบปผพฟมยรลวสหอฮ"
THAI_V = ["", "ะ", "า", "ิ", "ี", "ึ", "ื", "ุ", "ู", "่", "้", "ั"]
CJK = "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可她里后小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长"
KANA = "あいうえおかきくけこさしすせそたちつてとなにぬねのはひふへほまみむめもやゆよらりるれろわをんアイウエオカキクケコサシスセソタチツテト"
HANGUL = [chr(c) for c in range(0xAC00, 0xAC00 + 11172, 97)]
EMOJI = ["😀", "🎉", "👍", "👍🏽", "👩🏿‍💻", "👨‍👩‍👧‍👦", "🇫🇷", "❤️", "1️⃣", "🧑‍🚀", "🙏🏻", "🐍"]
CODE = ["def f(x):", "return x**2", "for i in range(10):", "if (a == b) {", "} else {", "x->y", "// note",
        "# comment", "print(\"hi\")", "{\"key\": [1, 2, 3]}", "a[i] += 1;", "std::vector<int> v;", "<div class=\"x\">"]
WORDS_EN = ["the", "of", "and", "to", "in", "is", "it", "that", "was", "for", "on", "are", "with", "they", "be",
            "at", "one", "have", "this", "from", "word", "but", "what", "some", "we", "can", "out", "other",
            "were", "all", "there", "when", "up", "use", "your", "how", "said", "an", "each", "she", "model",
            "token", "train", "data", "learn", "rate", "Hello", "World", "The", "Python", "Rust", "GPU"]
CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL", "'VE", "n't"]


def _syll_word(rng, consonants, vowels, n):
    return "".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(n))


def word(rng, script):
    n = rng.randint(1, 4)
    if script == "en":
        w = rng.choice(WORDS_EN)
        if rng.random() < 0.1:
            w += rng.choice(CONTRACTIONS)
        return w
    if script == "latin":
        w = _syll_word(rng, LATIN_C, LATIN_V, n)
        return w.capitalize() if rng.random() < 0.2 else w
    if script == "cyrillic":
        return "".join(rng.choice(CYRILLIC) for _ in range(n * 2 + 1))
    if script == "greek":
        return "".join(rng.choice(GREEK) for _ in range(n * 2 + 1))
    if script == "arabic":
        return "".join(rng.choice(ARABIC) for _ in range(n * 2 + 1))
    if script == "hebrew":
        return "".join(rng.choice(HEBREW) for _ in range(n * 2))
    if script == "deva":
        return "".join(rng.choice(DEVA_C) + rng.choice(DEVA_V) for _ in range(n))
    if script == "thai":
        return "".join(rng.choice(THAI_C) + rng.choice(THAI_V) for _ in range(n * 2))
    if script == "cjk":
        return "".join(rng.choice(CJK) for _ in range(n * 2))
    if script == "kana":
        return "".join(rng.choice(KANA) for _ in range(n * 2))
    if script == "hangul":
        return "".join(rng.choice(HANGUL) for _ in range(n))
    raise ValueError(script)


SCRIPTS = ["en", "en", "en", "latin", "cyrillic", "greek", "arabic", "hebrew", "deva", "thai", "cjk", "kana", "hangul"]


def line(rng):
    script = rng.choice(SCRIPTS)
    parts = []
    for _ in range(rng.randint(4, 24)):
        r = rng.random()
        if r < 0.08:
            parts.append(str(rng.randint(0, 10 ** rng.randint(1, 12))))
        elif r < 0.11:
            parts.append(f"{rng.randint(0, 999)}.{rng.randint(0, 99999)}")
        elif r < 0.14:
            parts.append(rng.choice(EMOJI))
        elif r < 0.17:
            parts.append(rng.choice(CODE))
        elif r < 0.22:
            parts.append(word(rng, rng.choice(SCRIPTS)))  # code switching
        else:
            parts.append(word(rng, script))
    sep = " " if script not in ("cjk", "kana", "thai") or rng.random() < 0.3 else ""
    text = sep.join(parts)
    r = rng.random()
    if r < 0.05:
        text = text.replace(" ", "   ", 2)
    elif r < 0.08:
        text = "\t" + text
    elif r < 0.1:
        text = unicodedata.normalize("NFD", text)
    if rng.random() < 0.3:
        text += rng.choice([".", "!", "?", ",", ":", ";", "...", " -"])
    return text


def lines(seed, n):
    rng = random.Random(seed)
    return [line(rng) for _ in range(n)]


def document(seed, n_lines):
    """Paragraphs separated by blank lines, as a dataset sample would look."""
    rng = random.Random(seed)
    out = []
    for i in range(n_lines):
        out.append(line(rng))
        if rng.random() < 0.15:
            out.append("")
    return "\n".join(out)
