"""Language codes: the FLORES-200 codes NLLB uses, and the ISO 639 / BCP 47 codes people type for them."""
from __future__ import annotations

import re

from inference.errors import InvalidInput

# (FLORES-200 code, English name, ISO 639-1 code). The ISO 639-1 code sits on the one entry it
# should resolve to: "ar" means Modern Standard Arabic, not one of the dialects NLLB also knows.
_LANGUAGES: tuple[tuple[str, str, str | None], ...] = (
    ("ace_Arab", "Acehnese (Arabic script)", None),
    ("ace_Latn", "Acehnese (Latin script)", None),
    ("acm_Arab", "Mesopotamian Arabic", None),
    ("acq_Arab", "Ta'izzi-Adeni Arabic", None),
    ("aeb_Arab", "Tunisian Arabic", None),
    ("afr_Latn", "Afrikaans", "af"),
    ("ajp_Arab", "South Levantine Arabic", None),
    ("aka_Latn", "Akan", "ak"),
    ("amh_Ethi", "Amharic", "am"),
    ("apc_Arab", "North Levantine Arabic", None),
    ("arb_Arab", "Modern Standard Arabic", "ar"),
    ("ars_Arab", "Najdi Arabic", None),
    ("ary_Arab", "Moroccan Arabic", None),
    ("arz_Arab", "Egyptian Arabic", None),
    ("asm_Beng", "Assamese", "as"),
    ("ast_Latn", "Asturian", None),
    ("awa_Deva", "Awadhi", None),
    ("ayr_Latn", "Central Aymara", "ay"),
    ("azb_Arab", "South Azerbaijani", None),
    ("azj_Latn", "North Azerbaijani", "az"),
    ("bak_Cyrl", "Bashkir", "ba"),
    ("bam_Latn", "Bambara", "bm"),
    ("ban_Latn", "Balinese", None),
    ("bel_Cyrl", "Belarusian", "be"),
    ("bem_Latn", "Bemba", None),
    ("ben_Beng", "Bengali", "bn"),
    ("bho_Deva", "Bhojpuri", None),
    ("bjn_Arab", "Banjar (Arabic script)", None),
    ("bjn_Latn", "Banjar (Latin script)", None),
    ("bod_Tibt", "Standard Tibetan", "bo"),
    ("bos_Latn", "Bosnian", "bs"),
    ("bug_Latn", "Buginese", None),
    ("bul_Cyrl", "Bulgarian", "bg"),
    ("cat_Latn", "Catalan", "ca"),
    ("ceb_Latn", "Cebuano", None),
    ("ces_Latn", "Czech", "cs"),
    ("cjk_Latn", "Chokwe", None),
    ("ckb_Arab", "Central Kurdish", None),
    ("crh_Latn", "Crimean Tatar", None),
    ("cym_Latn", "Welsh", "cy"),
    ("dan_Latn", "Danish", "da"),
    ("deu_Latn", "German", "de"),
    ("dik_Latn", "Southwestern Dinka", None),
    ("dyu_Latn", "Dyula", None),
    ("dzo_Tibt", "Dzongkha", "dz"),
    ("ell_Grek", "Greek", "el"),
    ("eng_Latn", "English", "en"),
    ("epo_Latn", "Esperanto", "eo"),
    ("est_Latn", "Estonian", "et"),
    ("eus_Latn", "Basque", "eu"),
    ("ewe_Latn", "Ewe", "ee"),
    ("fao_Latn", "Faroese", "fo"),
    ("pes_Arab", "Western Persian", "fa"),
    ("fij_Latn", "Fijian", "fj"),
    ("fin_Latn", "Finnish", "fi"),
    ("fon_Latn", "Fon", None),
    ("fra_Latn", "French", "fr"),
    ("fur_Latn", "Friulian", None),
    ("fuv_Latn", "Nigerian Fulfulde", "ff"),
    ("gla_Latn", "Scottish Gaelic", "gd"),
    ("gle_Latn", "Irish", "ga"),
    ("glg_Latn", "Galician", "gl"),
    ("grn_Latn", "Guarani", "gn"),
    ("guj_Gujr", "Gujarati", "gu"),
    ("hat_Latn", "Haitian Creole", "ht"),
    ("hau_Latn", "Hausa", "ha"),
    ("heb_Hebr", "Hebrew", "he"),
    ("hin_Deva", "Hindi", "hi"),
    ("hne_Deva", "Chhattisgarhi", None),
    ("hrv_Latn", "Croatian", "hr"),
    ("hun_Latn", "Hungarian", "hu"),
    ("hye_Armn", "Armenian", "hy"),
    ("ibo_Latn", "Igbo", "ig"),
    ("ilo_Latn", "Ilocano", None),
    ("ind_Latn", "Indonesian", "id"),
    ("isl_Latn", "Icelandic", "is"),
    ("ita_Latn", "Italian", "it"),
    ("jav_Latn", "Javanese", "jv"),
    ("jpn_Jpan", "Japanese", "ja"),
    ("kab_Latn", "Kabyle", None),
    ("kac_Latn", "Jingpho", None),
    ("kam_Latn", "Kamba", None),
    ("kan_Knda", "Kannada", "kn"),
    ("kas_Arab", "Kashmiri (Arabic script)", "ks"),
    ("kas_Deva", "Kashmiri (Devanagari script)", None),
    ("kat_Geor", "Georgian", "ka"),
    ("knc_Arab", "Central Kanuri (Arabic script)", None),
    ("knc_Latn", "Central Kanuri (Latin script)", "kr"),
    ("kaz_Cyrl", "Kazakh", "kk"),
    ("kbp_Latn", "Kabiyè", None),
    ("kea_Latn", "Kabuverdianu", None),
    ("khm_Khmr", "Khmer", "km"),
    ("kik_Latn", "Kikuyu", "ki"),
    ("kin_Latn", "Kinyarwanda", "rw"),
    ("kir_Cyrl", "Kyrgyz", "ky"),
    ("kmb_Latn", "Kimbundu", None),
    ("kon_Latn", "Kikongo", "kg"),
    ("kor_Hang", "Korean", "ko"),
    ("kmr_Latn", "Northern Kurdish", "ku"),
    ("lao_Laoo", "Lao", "lo"),
    ("lvs_Latn", "Standard Latvian", "lv"),
    ("lij_Latn", "Ligurian", None),
    ("lim_Latn", "Limburgish", "li"),
    ("lin_Latn", "Lingala", "ln"),
    ("lit_Latn", "Lithuanian", "lt"),
    ("lmo_Latn", "Lombard", None),
    ("ltg_Latn", "Latgalian", None),
    ("ltz_Latn", "Luxembourgish", "lb"),
    ("lua_Latn", "Luba-Kasai", None),
    ("lug_Latn", "Ganda", "lg"),
    ("luo_Latn", "Luo", None),
    ("lus_Latn", "Mizo", None),
    ("mag_Deva", "Magahi", None),
    ("mai_Deva", "Maithili", None),
    ("mal_Mlym", "Malayalam", "ml"),
    ("mar_Deva", "Marathi", "mr"),
    ("min_Latn", "Minangkabau", None),
    ("mkd_Cyrl", "Macedonian", "mk"),
    ("plt_Latn", "Plateau Malagasy", "mg"),
    ("mlt_Latn", "Maltese", "mt"),
    ("mni_Beng", "Meitei (Bengali script)", None),
    ("khk_Cyrl", "Halh Mongolian", "mn"),
    ("mos_Latn", "Mossi", None),
    ("mri_Latn", "Maori", "mi"),
    ("zsm_Latn", "Standard Malay", "ms"),
    ("mya_Mymr", "Burmese", "my"),
    ("nld_Latn", "Dutch", "nl"),
    ("nno_Latn", "Norwegian Nynorsk", "nn"),
    ("nob_Latn", "Norwegian Bokmål", "nb"),
    ("npi_Deva", "Nepali", "ne"),
    ("nso_Latn", "Northern Sotho", None),
    ("nus_Latn", "Nuer", None),
    ("nya_Latn", "Nyanja", "ny"),
    ("oci_Latn", "Occitan", "oc"),
    ("gaz_Latn", "West Central Oromo", "om"),
    ("ory_Orya", "Odia", "or"),
    ("pag_Latn", "Pangasinan", None),
    ("pan_Guru", "Eastern Panjabi", "pa"),
    ("pap_Latn", "Papiamento", None),
    ("pol_Latn", "Polish", "pl"),
    ("por_Latn", "Portuguese", "pt"),
    ("prs_Arab", "Dari", None),
    ("pbt_Arab", "Southern Pashto", "ps"),
    ("quy_Latn", "Ayacucho Quechua", "qu"),
    ("ron_Latn", "Romanian", "ro"),
    ("run_Latn", "Rundi", "rn"),
    ("rus_Cyrl", "Russian", "ru"),
    ("sag_Latn", "Sango", "sg"),
    ("san_Deva", "Sanskrit", "sa"),
    ("sat_Beng", "Santali", None),
    ("scn_Latn", "Sicilian", None),
    ("shn_Mymr", "Shan", None),
    ("sin_Sinh", "Sinhala", "si"),
    ("slk_Latn", "Slovak", "sk"),
    ("slv_Latn", "Slovenian", "sl"),
    ("smo_Latn", "Samoan", "sm"),
    ("sna_Latn", "Shona", "sn"),
    ("snd_Arab", "Sindhi", "sd"),
    ("som_Latn", "Somali", "so"),
    ("sot_Latn", "Southern Sotho", "st"),
    ("spa_Latn", "Spanish", "es"),
    ("als_Latn", "Tosk Albanian", "sq"),
    ("srd_Latn", "Sardinian", "sc"),
    ("srp_Cyrl", "Serbian", "sr"),
    ("ssw_Latn", "Swati", "ss"),
    ("sun_Latn", "Sundanese", "su"),
    ("swe_Latn", "Swedish", "sv"),
    ("swh_Latn", "Swahili", "sw"),
    ("szl_Latn", "Silesian", None),
    ("tam_Taml", "Tamil", "ta"),
    ("tat_Cyrl", "Tatar", "tt"),
    ("tel_Telu", "Telugu", "te"),
    ("tgk_Cyrl", "Tajik", "tg"),
    ("tgl_Latn", "Tagalog", "tl"),
    ("tha_Thai", "Thai", "th"),
    ("tir_Ethi", "Tigrinya", "ti"),
    ("taq_Latn", "Tamasheq (Latin script)", None),
    ("taq_Tfng", "Tamasheq (Tifinagh script)", None),
    ("tpi_Latn", "Tok Pisin", None),
    ("tsn_Latn", "Tswana", "tn"),
    ("tso_Latn", "Tsonga", "ts"),
    ("tuk_Latn", "Turkmen", "tk"),
    ("tum_Latn", "Tumbuka", None),
    ("tur_Latn", "Turkish", "tr"),
    ("twi_Latn", "Twi", "tw"),
    ("tzm_Tfng", "Central Atlas Tamazight", None),
    ("uig_Arab", "Uyghur", "ug"),
    ("ukr_Cyrl", "Ukrainian", "uk"),
    ("umb_Latn", "Umbundu", None),
    ("urd_Arab", "Urdu", "ur"),
    ("uzn_Latn", "Northern Uzbek", "uz"),
    ("vec_Latn", "Venetian", None),
    ("vie_Latn", "Vietnamese", "vi"),
    ("war_Latn", "Waray", None),
    ("wol_Latn", "Wolof", "wo"),
    ("xho_Latn", "Xhosa", "xh"),
    ("ydd_Hebr", "Eastern Yiddish", "yi"),
    ("yor_Latn", "Yoruba", "yo"),
    ("yue_Hant", "Cantonese", None),
    ("zho_Hans", "Chinese (Simplified)", "zh"),
    ("zho_Hant", "Chinese (Traditional)", None),
    ("zul_Latn", "Zulu", "zu"),
)

NLLB_CODES: tuple[str, ...] = tuple(code for code, _, _ in _LANGUAGES)
_NAMES: dict[str, str] = {code: name for code, name, _ in _LANGUAGES}

# Where a language has two scripts, the one its bare code means (the other keeps its script subtag).
_DEFAULT_SCRIPT: dict[str, str] = {"ace": "ace_Latn", "bjn": "bjn_Latn", "taq": "taq_Latn"}

# ISO 639-3 macrolanguage codes, ISO 639-3 codes NLLB does not use, and legacy codes that
# language detectors still emit ("iw", "in", "ji", "jw"), each to the variety NLLB translates.
_EXTRA_ALIASES: dict[str, str] = {
    "ara": "arb_Arab", "aym": "ayr_Latn", "aze": "azj_Latn", "fas": "pes_Arab", "ful": "fuv_Latn",
    "kau": "knc_Latn", "kur": "kmr_Latn", "lav": "lvs_Latn", "mlg": "plt_Latn", "mon": "khk_Cyrl",
    "msa": "zsm_Latn", "nep": "npi_Deva", "nor": "nob_Latn", "orm": "gaz_Latn", "ori": "ory_Orya",
    "pus": "pbt_Arab", "que": "quy_Latn", "sqi": "als_Latn", "swa": "swh_Latn", "uzb": "uzn_Latn",
    "yid": "ydd_Hebr", "ekk": "est_Latn", "cmn": "zho_Hans", "fil": "tgl_Latn", "no": "nob_Latn",
    "iw": "heb_Hebr", "in": "ind_Latn", "ji": "ydd_Hebr", "jw": "jav_Latn",
}

# Regions whose Chinese is written in traditional characters ("zh-TW").
_TRADITIONAL_CHINESE_REGIONS = {"TW", "HK", "MO"}


def _build_aliases() -> tuple[dict[str, str], dict[str, str]]:
    aliases: dict[str, str] = {}
    iso1_by_language: dict[str, str] = {}
    for code, _, iso1 in _LANGUAGES:
        language = code.split("_")[0]
        aliases.setdefault(language, _DEFAULT_SCRIPT.get(language, code))
        if iso1:
            aliases[iso1] = code
            aliases[language] = code
            iso1_by_language[language] = iso1
    aliases.update(_EXTRA_ALIASES)
    return aliases, iso1_by_language


_ALIASES, _ISO1_BY_LANGUAGE = _build_aliases()
_BY_LOWER_CODE: dict[str, str] = {code.lower(): code for code in NLLB_CODES}
_SUBTAG = re.compile(r"[-_]")


def _unknown(code: str, detail: str = "") -> InvalidInput:
    return InvalidInput(
        f"Unknown language code {code!r}{detail}: use an ISO 639-1 code ('fr'), an ISO 639-3 code ('fra') "
        "or a FLORES-200 code ('fra_Latn')."
    )


def to_nllb(code: str) -> str:
    """The FLORES-200 code for any accepted spelling: 'fr', 'fra', 'fra_Latn', 'FR', 'zh-TW', 'pt-BR'."""
    if not isinstance(code, str) or not code.strip():
        raise InvalidInput("A language code is required.")
    cleaned = code.strip()
    exact = _BY_LOWER_CODE.get(cleaned.lower())
    if exact:
        return exact
    language, *subtags = _SUBTAG.split(cleaned)
    base = _ALIASES.get(language.lower())
    if base is None:
        raise _unknown(code)
    script = region = None
    for subtag in subtags:
        if script is None and region is None and len(subtag) == 4 and subtag.isalpha():
            script = subtag.title()
        elif region is None and (len(subtag) == 2 and subtag.isalpha() or len(subtag) == 3 and subtag.isdigit()):
            region = subtag.upper()
        else:
            raise _unknown(code, f" (cannot read the subtag {subtag!r})")
    if script is not None:
        scripted = f"{base.split('_')[0]}_{script}"
        if scripted not in _NAMES:
            raise InvalidInput(f"No FLORES-200 code for {_NAMES[base]} in the {script} script (from {code!r}).")
        return scripted
    if base == "zho_Hans" and region in _TRADITIONAL_CHINESE_REGIONS:
        return "zho_Hant"
    return base


def to_iso(code: str) -> str:
    """The shortest code people use for a language: ISO 639-1 where one exists ('fr'), else ISO 639-3
    ('ast'); a script subtag is added where the bare code would mean another script ('zh-Hant')."""
    nllb = to_nllb(code)
    language, script = nllb.split("_")
    short = _ISO1_BY_LANGUAGE.get(language, language)
    return short if _ALIASES.get(short) == nllb else f"{short}-{script}"


def language_name(code: str) -> str:
    """English name of a language, for messages and the admin: language_name('sw') == 'Swahili'."""
    return _NAMES[to_nllb(code)]
