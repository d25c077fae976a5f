from training.text import clean_category_path, clean_text, content_terms, is_markup_junk, query_from_path


def test_clean_text_strips_tags_and_entities_including_double_escaped():
    assert clean_text("<b>Sports &amp;amp; Outdoors</b>") == "Sports & Outdoors"
    assert clean_text(["Line <br/>one", None, "two"]) == "Line one two"
    assert clean_text(None) == ""


def test_unterminated_span_title_is_junk_but_words_are_not():
    assert is_markup_junk('<span class="a-size-medium a-color-secondary"')
    assert is_markup_junk("   ")
    assert is_markup_junk('var x = {"a": 1};')
    assert not is_markup_junk("Reason Magazine")
    assert not is_markup_junk("The Economist &amp; Friends")


def test_hem_query_rule_drops_stopwords_duplicates_and_junk_levels():
    path = clean_category_path(["Magazine Subscriptions", "Sports, Recreation &amp; Outdoors", "<span", "Sports & Leisure"])
    assert path == ["Magazine Subscriptions", "Sports, Recreation & Outdoors", "Sports & Leisure"]
    assert query_from_path(path) == "magazine subscriptions sports recreation outdoors leisure"
    assert query_from_path([]) == ""
    assert content_terms("the best of the best") == ["best"]
