"""Hash banks (HMA-style): matching uploads against per-tenant banks of known-bad and known-good
images (`index`, over the PDQ `hashindex`) and administering them (`admin`)."""

from moderation.banks.admin import (
    add_entries,
    add_image,
    create_bank,
    export_hash_list,
    image_entry,
    import_hash_list,
    list_banks,
    list_entries,
    parse_hash_list,
    remove_entry,
)
from moderation.banks.index import BankIndex

__all__ = [
    "BankIndex",
    "add_entries",
    "add_image",
    "create_bank",
    "export_hash_list",
    "image_entry",
    "import_hash_list",
    "list_banks",
    "list_entries",
    "parse_hash_list",
    "remove_entry",
]
