"""The data flows: receive → route → encode → seal → store; fetch → open → decode → write."""
