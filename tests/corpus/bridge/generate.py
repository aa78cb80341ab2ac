#!/usr/bin/env python3
"""Writes the bridge's hostile-input corpus: one file per case, named <REASON>__<what>.bin.
The e2e test publishes each on pos/M005/T0470/tx (T0470's topic in the local terminal registry)
and expects it on the dead-letter topic with REASON; TOPIC_INVALID cases go to a bad topic, which
the broker's registry-generated ACL refuses before the bridge sees them. Re-run after changing the contract."""
import json, os

here = os.path.dirname(os.path.abspath(__file__))
PAN = "4111111111111111"

def valid(**over):
    p = {
        "version": 1, "transaction_id": "corpus-1", "terminal_id": "T0470", "merchant_id": "M005",
        "sequence": 1, "transaction_time": "2026-11-27T10:15:30.123Z", "type": "sale",
        "amount_minor": 1234, "currency": "EUR", "payment_method": "card", "entry_mode": "chip",
        "card": {"pan": PAN}, "response_code": "00", "mcc": "5814",
        "location": {"lat": 52.52, "lon": 13.405},
        "line_items": [{"sku": "COF-01", "description": "Coffee", "unit_price_minor": 617, "quantity": 2}],
    }
    for k, v in over.items():
        if v is DROP:
            p.pop(k)
        else:
            p[k] = v
    return json.dumps(p).encode()

DROP = object()

def plant(name):
    """A value planted in a sensitive-authentication-data field: the e2e test checks that it
    appears in no topic and no log line (the field's name may)."""
    return "SADPLANT-" + name.upper().replace("_", "").replace("-", "").replace(" ", "")

# Every SAD field name the bridge refuses (services/bridge/src/card.rs), each in some spelling,
# planted at some depth: top level, in the card, in a line item, in the location.
SAD_NAMES = ["cvv", "Cvv2", "iCVV", "dcvv", "CVC", "cvc2", "cvc_3", "CVN", "cvn2", "cav2", "cid", "CSC",
             "cvd", "security_code", "CardSecurityCode", "PIN", "pin-block", "pin_data", "encrypted_pin",
             "EncryptedPinBlock", "track", "track_1", "Track2", "track3", "track_data", "track1_data",
             "Track-2-Data", "track3data", "magstripe", "mag_stripe_data", "magnetic_stripe",
             "MagneticStripeData"]

def sad_case(i, name):
    where = i % 4
    if where == 0:
        return valid(**{name: plant(name)})
    if where == 1:
        return valid(card={"pan": PAN, name: plant(name)})
    if where == 2:
        return valid(line_items=[{"sku": "COF-01", "description": "Coffee", "unit_price_minor": 617, "quantity": 2, name: plant(name)}])
    return valid(location={"lat": 52.52, "lon": 13.405, name: plant(name)})

cases = {
    "NOT_JSON__empty": b"",
    "NOT_JSON__plain_text": b"hello terminal " + PAN.encode(),
    "NOT_JSON__truncated": valid()[:40],
    "NOT_JSON__trailing_garbage": valid() + b" trailing",
    "NOT_JSON__array": b"[1,2,3]",
    "NOT_JSON__null": b"null",
    "NOT_JSON__number": b"42",
    "NOT_JSON__xml": b"<tx><pan>" + PAN.encode() + b"</pan></tx>",
    "NOT_JSON__deep_nesting": b"[" * 200 + b"]" * 200,
    "NOT_UTF8__invalid_bytes": b"\xff\xfe\xfd{}",
    "NOT_UTF8__overlong_slash": b'{"a":"\xc0\xaf"}',
    "NOT_UTF8__surrogate": b'{"a":"\xed\xa0\x80"}',
    "OVERSIZE__17k": valid(line_items=[{"sku": "PAD", "description": "x" * 190, "unit_price_minor": 1, "quantity": 1}] * 90),
    "SCHEMA_VIOLATION__missing_transaction_id": valid(transaction_id=DROP),
    "SCHEMA_VIOLATION__missing_version": valid(version=DROP),
    "SCHEMA_VIOLATION__version_as_string": valid(version="1"),
    "SCHEMA_VIOLATION__amount_as_string": valid(amount_minor="1234"),
    "SCHEMA_VIOLATION__amount_as_float": valid(amount_minor=12.34),
    "SCHEMA_VIOLATION__amount_overflows_i64": valid().replace(b'"amount_minor": 1234', b'"amount_minor": 9223372036854775808'),
    "SCHEMA_VIOLATION__unknown_field": valid(tip_minor=100),
    "SCHEMA_VIOLATION__unknown_nested_field": valid(location={"lat": 1.0, "lon": 2.0, "alt": 3.0}),
    "SCHEMA_VIOLATION__sequence_as_bool": valid(sequence=True),
    "SCHEMA_VIOLATION__card_as_string": valid(card=PAN),
    "SCHEMA_VIOLATION__line_items_as_object": valid(line_items={"sku": "x"}),
    "UNSUPPORTED_VERSION__3": valid(version=3),
    # Version 2's offline fields (docs/terminal-contract.md).
    "SCHEMA_VIOLATION__offline_in_version_1": valid(offline=True),
    "SCHEMA_VIOLATION__offline_as_string": valid(version=2, offline="yes"),
    "FIELD_INVALID__offline_since_without_offline": valid(version=2, offline_since="2026-11-27T09:00:00Z"),
    "FIELD_INVALID__offline_since_after_capture": valid(version=2, offline=True, offline_since="2026-11-27T11:00:00Z"),
    "UNSUPPORTED_VERSION__0": valid(version=0),
    "UNSUPPORTED_VERSION__negative": valid(version=-1),
    "IDENTITY_MISMATCH__other_terminal": valid(terminal_id="T0471"),
    "IDENTITY_MISMATCH__other_merchant": valid(merchant_id="M999"),
    "CARD_DATA_FORBIDDEN__cvv": valid(card={"pan": PAN, "cvv": plant("cvv")}),
    "CARD_DATA_FORBIDDEN__cvv_upper": valid(card={"pan": PAN, "CVV2": plant("CVV2")}),
    "CARD_DATA_FORBIDDEN__track2": valid(track2=PAN + "=2812101" + plant("track2")),
    "CARD_DATA_FORBIDDEN__pin_block": valid(pin_block=plant("pin_block")),
    "DUPLICATE_KEY__amount": valid().replace(b'"amount_minor": 1234', b'"amount_minor": 1, "amount_minor": 1234'),
    "DUPLICATE_KEY__transaction_id": valid().replace(b'"transaction_id": "corpus-1"', b'"transaction_id": "corpus-1", "transaction_id": "corpus-2"'),
    "DUPLICATE_KEY__nested_pan": valid().replace(b'{"pan": "' + PAN.encode() + b'"}', b'{"pan": "4000000000000002", "pan": "' + PAN.encode() + b'"}'),
    "DUPLICATE_KEY__in_line_item": valid().replace(b'"quantity": 2', b'"quantity": 2, "quantity": 200'),
    "DUPLICATE_KEY__escaped_twin": valid().replace(b'"mcc": "5814"', b'"mcc": "5814", "\\u006dcc": "6011"'),
    "NOT_JSON__truncated_with_cvv": valid(card={"pan": PAN, "cvv": plant("cvv-truncated")})[:-40],
    "PAN_INVALID__luhn": valid(card={"pan": "4111111111111112"}),
    "PAN_INVALID__short": valid(card={"pan": "411111111111"}),
    "PAN_INVALID__letters": valid(card={"pan": "4111abcd11111111"}),
    "PAN_INVALID__twenty_digits": valid(card={"pan": "41111111111111111113"}),
    "FIELD_INVALID__unknown_type": valid(type="purchase"),
    "FIELD_INVALID__unknown_entry_mode": valid(entry_mode="nfc"),
    "FIELD_INVALID__time_not_rfc3339": valid(transaction_time="yesterday"),
    "FIELD_INVALID__latitude_out_of_range": valid(location={"lat": 91.0, "lon": 0.0}),
    "FIELD_INVALID__empty_transaction_id": valid(transaction_id=""),
    "FIELD_INVALID__long_currency": valid(currency="EURO"),
    "FIELD_INVALID__control_characters": valid(line_items=[{"sku": "A\u0007", "description": "bell", "unit_price_minor": 1234, "quantity": 1}]),
    "FIELD_INVALID__negative_sequence": valid(sequence=-5),
    "TOPIC_INVALID__bad_merchant_segment": valid(merchant_id="M$470"),
}
for i, name in enumerate(SAD_NAMES):
    cases[f"CARD_DATA_FORBIDDEN__sad_{i:02}_{name.lower().replace('-', '_')}"] = sad_case(i, name)
for old in os.listdir(here):
    if old.endswith(".bin"):
        os.remove(os.path.join(here, old))
for name, data in cases.items():
    with open(os.path.join(here, name + ".bin"), "wb") as f:
        f.write(data)
print(f"{len(cases)} cases")
