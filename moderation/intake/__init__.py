"""What comes in: image decoding, limits and hashes (`images`), the content-addressed blob store
(`blobs`), and the checks on free-text fields (`text`)."""
