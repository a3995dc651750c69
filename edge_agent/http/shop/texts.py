"""The page's labels: built in for a few languages, ``[shop] language`` picks
one (a regional tag such as ``cs-CZ`` falls back to ``cs``, anything else to
English) and ``[shop.text]`` overrides single labels."""

from __future__ import annotations

from typing import Mapping

TEXTS: dict[str, dict[str, str]] = {
    "en": {
        "welcome": "Offers while you shop",
        "consent_intro": "This page can show you offers for the part of the store you are in. "
                         "Choose what you allow; you can opt out at any time.",
        "offers_q": "Show me offers in the store (uses my location while this page is open)",
        "tracking_q": "Keep a record of my visit to improve the store",
        "yes": "Yes", "no": "No", "continue": "Continue",
        "optout": "Opt out",
        "optedout": "You have opted out. This phone gets no offers and nothing about its visit is kept.",
        "again": "Change my choice",
        "waiting": "Walk around the store: offers appear here.",
        "no_offers": "You chose no offers. Nothing more to do here.",
        "locating": "Finding you in the store…",
        "no_geo": "Location is off. Scan a code on a shelf to check in there.",
        "no_geo_checked": "Location is off: offers come for the shelf you scanned. Scan another shelf's code "
                          "to check in there.",
        "checked_in": "Checked in",
        "use": "Use", "nothanks": "No thanks",
        "code_hint": "Show this code at the till",
        "valid_until": "Valid until",
        "offline": "Reconnecting…",
        "error": "Sorry, that did not work",
        "expired": "This offer has expired",
        "back": "Back to offers",
        "go_to": "Find it in",
    },
    "cs": {
        "welcome": "Nabídky při nákupu",
        "consent_intro": "Tato stránka vám může ukazovat nabídky pro část obchodu, ve které jste. "
                         "Vyberte, co povolíte; kdykoli to můžete odvolat.",
        "offers_q": "Ukazovat mi nabídky v obchodě (používá polohu, dokud je stránka otevřená)",
        "tracking_q": "Uchovat záznam o mé návštěvě pro zlepšení obchodu",
        "yes": "Ano", "no": "Ne", "continue": "Pokračovat",
        "optout": "Odhlásit",
        "optedout": "Jste odhlášeni. Tento telefon nedostává nabídky a o jeho návštěvě se nic neukládá.",
        "again": "Změnit volbu",
        "waiting": "Projděte se obchodem: nabídky se objeví zde.",
        "no_offers": "Nabídky jste odmítli. Zde už není co dělat.",
        "locating": "Hledáme vás v obchodě…",
        "no_geo": "Poloha je vypnutá. Naskenujte kód na regálu a přihlaste se tam.",
        "no_geo_checked": "Poloha je vypnutá: nabídky přijdou pro regál, jehož kód jste naskenovali.",
        "checked_in": "Přihlášeno",
        "use": "Použít", "nothanks": "Ne, děkuji",
        "code_hint": "Ukažte tento kód u pokladny",
        "valid_until": "Platí do",
        "offline": "Připojování…",
        "error": "Omlouváme se, nepovedlo se to",
        "expired": "Platnost nabídky vypršela",
        "back": "Zpět na nabídky",
        "go_to": "Najdete v",
    },
    "de": {
        "welcome": "Angebote beim Einkaufen",
        "consent_intro": "Diese Seite kann Ihnen Angebote für den Bereich des Geschäfts zeigen, in dem Sie "
                         "sind. Wählen Sie, was Sie erlauben; Sie können sich jederzeit abmelden.",
        "offers_q": "Angebote im Geschäft zeigen (nutzt meinen Standort, solange die Seite offen ist)",
        "tracking_q": "Meinen Besuch aufzeichnen, um das Geschäft zu verbessern",
        "yes": "Ja", "no": "Nein", "continue": "Weiter",
        "optout": "Abmelden",
        "optedout": "Sie haben sich abgemeldet. Dieses Telefon erhält keine Angebote und von seinem Besuch "
                    "wird nichts gespeichert.",
        "again": "Auswahl ändern",
        "waiting": "Gehen Sie durch das Geschäft: Angebote erscheinen hier.",
        "no_offers": "Sie haben keine Angebote gewählt.",
        "locating": "Wir suchen Sie im Geschäft…",
        "no_geo": "Standort ist aus. Scannen Sie einen Code am Regal, um sich dort anzumelden.",
        "no_geo_checked": "Standort ist aus: Angebote kommen für das Regal, dessen Code Sie gescannt haben. "
                          "Scannen Sie den Code eines anderen Regals, um sich dort anzumelden.",
        "checked_in": "Angemeldet",
        "use": "Einlösen", "nothanks": "Nein danke",
        "code_hint": "Zeigen Sie diesen Code an der Kasse",
        "valid_until": "Gültig bis",
        "offline": "Verbinde…",
        "error": "Das hat leider nicht geklappt",
        "expired": "Dieses Angebot ist abgelaufen",
        "back": "Zurück zu den Angeboten",
        "go_to": "Zu finden in",
    },
}


def texts(language: str, overrides: Mapping[str, str]) -> dict[str, str]:
    base = TEXTS.get(language) or TEXTS.get(language.split("-")[0].lower()) or {}
    return {**TEXTS["en"], **base, **overrides}
