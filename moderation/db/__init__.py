"""The database: engines (`engine`), the schema (`tables`), dialect helpers (`sql`) and
migrations (`migrate`). The ground floor: it imports only `moderation.settings`."""
