"""The submission record as others read it: its public status (`status.view`), which the API
and the webhook callbacks both answer with."""
