"""Small applications the multi-worker integration tests run under real servers."""
