/* Tests for server/generation: token collection, streamed text and stop strings, driven
 * without a model by calling the engine_request callbacks directly with the ids of an
 * encoded text (the real Llama 3 tokenizer, tests/fixtures/tokenizer/llama3). Expected
 * texts come from tokenizer_decode (checked against Hugging Face goldens in
 * test_tokenizer) and from the plain strings themselves, never from generation. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistr.h>

#include "core/tokenizer.h"
#include "server/generation.h"

#define TOK_DIR "tests/fixtures/tokenizer/llama3"
#define TOK_LLAMA2_DIR "tests/fixtures/tokenizer/llama2"

/* 9 MB of tokenizer.json: loaded once in main, before the forked test runs. llama2 (byte
 * fallback: its stream holds a run of <0xNN> tokens until the run ends) for one test. */
static tokenizer *tok, *tok_llama2;

/* ---- what on_text saw ---- */

typedef struct {
    char buf[4096];   /* every piece, concatenated */
    size_t len;
    int n_pieces;
    int n_empty;      /* pieces of length 0 */
    int n_invalid;    /* pieces that are not complete UTF-8 on their own */
    char first_invalid[64];
} sink;

static void on_text(void *user, const char *text, size_t len)
{
    sink *s = user;
    ck_assert_msg(s->len + len < sizeof s->buf, "on_text: more text than any test feeds");
    if (len && u8_check((const uint8_t *)text, len) != NULL && s->n_invalid++ == 0) {
        size_t k = 0;
        for (size_t i = 0; i < len && k + 5 < sizeof s->first_invalid; i++)
            k += (size_t)snprintf(s->first_invalid + k, sizeof s->first_invalid - k, "%02x ",
                                  (unsigned char)text[i]);
    }
    memcpy(s->buf + s->len, text, len);
    s->len += len;
    s->buf[s->len] = '\0';
    s->n_pieces++;
    s->n_empty += len == 0;
}

/* ---- driving a generation like the engine does ---- */

typedef struct {
    generation *g;
    engine_request req;
    sink out;
    int stopped_at;   /* index of the first token whose on_token returned nonzero, or -1 */
    int n_fed;
} run;

/* Creates a generation over tok (or none) with the given stop strings, on_text → r->out. */
static void run_start(run *r, const tokenizer *t, const char *const *stops, int n_stop)
{
    memset(r, 0, sizeof *r);
    r->stopped_at = -1;
    generation_options o = {.tok = t, .n_stop = n_stop, .on_text = on_text, .user = &r->out};
    for (int i = 0; i < n_stop; i++)
        o.stop[i] = stops[i];
    lr_error err = {0};
    r->g = generation_new(&o, &err);
    ck_assert_msg(r->g != NULL, "generation_new: %s", err.msg);
    generation_attach(r->g, &r->req);
    ck_assert_ptr_nonnull(r->req.on_token);
    ck_assert_ptr_nonnull(r->req.on_done);
}

/* Feeds ids until on_token asks to stop (as the engine does); returns that index or -1. */
static int run_feed(run *r, const int *ids, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        engine_token t = {.id = ids[i], .logprob = -0.5f * (float)r->n_fed};
        r->n_fed++;
        if (r->req.on_token(r->req.user, &t)) {
            r->stopped_at = r->n_fed - 1;
            return r->stopped_at;
        }
    }
    return -1;
}

static void run_done(run *r)
{
    r->req.on_done(r->req.user, r->stopped_at >= 0 ? ENGINE_FINISH_STOP : ENGINE_FINISH_LENGTH,
                   NULL);
}

static int *encode(const char *text, size_t *n)
{
    int *ids = NULL;
    lr_error err = {0};
    ck_assert_msg(tokenizer_encode(tok, text, strlen(text), 0, &ids, n, &err) == 0,
                  "encode '%s': %s", text, err.msg);
    ck_assert_msg(*n > 0, "encode '%s': no ids", text);
    return ids;
}

static char *decode(const int *ids, size_t n)
{
    char *s = NULL;
    lr_error err = {0};
    ck_assert_msg(tokenizer_decode(tok, ids, n, 1, &s, NULL, &err) == 0, "decode: %s", err.msg);
    return s;
}

/* The byte-level token of one raw byte (GPT-2's bytes_to_unicode stand-in character). */
static int byte_token(unsigned char b)
{
    unsigned cp = b;
    if (!((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE)) {
        unsigned n = 0;
        for (unsigned x = 0; x < b; x++)
            if (!((x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || x >= 0xAE))
                n++;
        cp = 256 + n;
    }
    char s[4];
    if (cp < 0x80) {
        s[0] = (char)cp;
        s[1] = '\0';
    } else {
        s[0] = (char)(0xC0 | (cp >> 6));
        s[1] = (char)(0x80 | (cp & 0x3F));
        s[2] = '\0';
    }
    int id = tokenizer_token_id(tok, s);
    ck_assert_msg(id >= 0, "no byte-level token for byte 0x%02x", b);
    return id;
}

/* Checks the invariants every run must keep, whatever the stop strings:
 * streamed pieces concatenate to the final text, no piece is empty, every fed token was
 * collected in order. (That each piece is whole UTF-8 is checked by the tests named so,
 * to keep one failure per cause.) */
static void check_invariants(run *r, const int *ids)
{
    size_t len;
    const char *text = generation_text(r->g, &len);
    ck_assert_int_eq(generation_finished(r->g), 1);
    ck_assert_msg(len == strlen(text), "text length %zu but strlen %zu", len, strlen(text));
    ck_assert_msg(r->out.len == len && memcmp(r->out.buf, text, len) == 0,
                  "streamed '%s' != final text '%s'", r->out.buf, text);
    ck_assert_int_eq(r->out.n_empty, 0);
    int n;
    const engine_token *t = generation_tokens(r->g, &n);
    ck_assert_int_eq(n, r->n_fed);
    for (int i = 0; i < n; i++) {
        ck_assert_int_eq(t[i].id, ids[i]);
        ck_assert_float_eq(t[i].logprob, -0.5f * (float)i);
    }
}

/* The index of the first token after which decode(ids[0..k]) contains one of stops. */
static int first_completing(const int *ids, size_t n, const char *const *stops, int n_stop)
{
    for (size_t k = 0; k < n; k++) {
        char *s = decode(ids, k + 1);
        int hit = 0;
        for (int i = 0; i < n_stop; i++)
            hit |= strstr(s, stops[i]) != NULL;
        free(s);
        if (hit)
            return (int)k;
    }
    return -1;
}

/* Full text (no stop strings configured or none matching) must equal tokenizer_decode. */
static void check_whole_text(const char *text, const char *const *stops, int n_stop)
{
    size_t n;
    int *ids = encode(text, &n);
    run r;
    run_start(&r, tok, stops, n_stop);
    ck_assert_int_eq(run_feed(&r, ids, n), -1);
    run_done(&r);
    check_invariants(&r, ids);
    char *want = decode(ids, n);
    ck_assert_str_eq(generation_text(r.g, NULL), want);
    ck_assert_str_eq(want, text);   /* llama3 round-trips these */
    ck_assert_int_eq(generation_finish_reason(r.g), ENGINE_FINISH_LENGTH);
    free(want);
    free(ids);
    generation_free(r.g);
}

/* Feeds text's ids with stops; expects the final text to be text's first want_cut bytes,
 * finish STOP, and on_token asking to stop at the first token completing a stop string. */
static void check_stop(const char *text, const char *const *stops, int n_stop, size_t want_cut)
{
    size_t n;
    int *ids = encode(text, &n);
    int k = first_completing(ids, n, stops, n_stop);
    ck_assert_msg(k >= 0, "test setup: no stop string occurs in '%s'", text);
    run r;
    run_start(&r, tok, stops, n_stop);
    ck_assert_int_eq(run_feed(&r, ids, n), k);
    run_done(&r);
    check_invariants(&r, ids);
    size_t len;
    const char *got = generation_text(r.g, &len);
    ck_assert_msg(len == want_cut && memcmp(got, text, want_cut) == 0,
                  "text '%s' (%zu bytes), want the first %zu bytes of '%s'", got, len, want_cut,
                  text);
    ck_assert_int_eq(generation_finish_reason(r.g), ENGINE_FINISH_STOP);
    free(ids);
    generation_free(r.g);
}

/* ---- core ---- */

static const char *const TEXTS[] = {
    "Hello world, again",
    "The quick brown fox jumps over the lazy dog. It's been a while; we'll see.",
    "Café naïve résumé façade Ångström",
    "日本語のテキストです。東京は大きい。",
    "emoji 😀 🎉 👍🏽 ❤️ family 👨‍👩‍👧‍👦 flag 🇫🇷",
    "def f(x):\n\treturn x * 2  # comment\n\n\n    if x:\n        pass",
};
#define N_TEXTS (int)(sizeof TEXTS / sizeof TEXTS[0])

/* (One test over all texts rather than a loop test: every forked test costs a
 * LeakSanitizer scan of the big tokenizer heap under `make asan`.) */
START_TEST(test_without_stop_strings_text_equals_tokenizer_decode)
{
    for (int t = 0; t < N_TEXTS; t++)
        check_whole_text(TEXTS[t], NULL, 0);
}
END_TEST

START_TEST(test_with_stop_strings_that_never_occur_text_equals_tokenizer_decode)
{
    static const char *const stops[] = {"@@never@@", "~~", "Z"};
    for (int t = 0; t < N_TEXTS; t++)
        check_whole_text(TEXTS[t], stops, 3);
}
END_TEST

START_TEST(test_stop_world_cuts_text_before_it_at_the_completing_token)
{
    static const char *const stops[] = {"world"};
    size_t n;
    int *ids = encode("Hello world, again", &n);
    /* the token completing "world", found by decoding prefixes */
    int k = first_completing(ids, n, stops, 1);
    ck_assert_int_ge(k, 1);
    run r;
    run_start(&r, tok, stops, 1);
    for (int i = 0; i < k; i++) {
        engine_token t = {.id = ids[i], .logprob = -0.5f * (float)i};
        r.n_fed++;
        ck_assert_msg(r.req.on_token(r.req.user, &t) == 0, "stopped early at token %d", i);
    }
    engine_token t = {.id = ids[k], .logprob = -0.5f * (float)k};
    r.n_fed++;
    ck_assert_msg(r.req.on_token(r.req.user, &t) != 0, "token %d completes 'world'", k);
    r.stopped_at = k;
    /* everything before the stop string is already streamed, before on_done */
    ck_assert_str_eq(r.out.buf, "Hello ");
    run_done(&r);
    check_invariants(&r, ids);
    ck_assert_str_eq(generation_text(r.g, NULL), "Hello ");
    ck_assert_int_eq(generation_finish_reason(r.g), ENGINE_FINISH_STOP);
    int nt;
    generation_tokens(r.g, &nt);
    ck_assert_int_eq(nt, k + 1);   /* the completing token is kept */
    free(ids);
    generation_free(r.g);
}
END_TEST

START_TEST(test_stop_string_spanning_two_tokens)
{
    /* "o w" = end of "Hello" + start of " world" */
    static const char *const stops[] = {"o w"};
    size_t n;
    int *ids = encode("Hello world", &n);
    char *first = decode(ids, 1);
    ck_assert_str_eq(first, "Hello");   /* the setup: the stop really spans two tokens */
    free(first);
    free(ids);
    check_stop("Hello world", stops, 1, strlen("Hell"));
}
END_TEST

START_TEST(test_stop_string_spanning_three_tokens_in_code)
{
    static const char *const stops[] = {"\treturn x *"};
    check_stop(TEXTS[5], stops, 1, strlen("def f(x):\n"));
}
END_TEST

START_TEST(test_earliest_stop_string_wins_in_either_order)
{
    const char *text = "The quick brown fox jumps over the lazy dog.";
    static const char *const later_first[] = {"lazy", "fox"};
    static const char *const earlier_first[] = {"fox", "lazy"};
    check_stop(text, later_first, 2, strlen("The quick brown "));
    check_stop(text, earlier_first, 2, strlen("The quick brown "));
    /* a longer string and its own prefix: the match that starts first */
    static const char *const nested[] = {"brown fox", "own"};
    check_stop(text, nested, 2, strlen("The quick br"));
}
END_TEST

/* Both stop strings complete in the same token (" world"): the one that starts first wins,
 * whichever is listed first. */
START_TEST(test_two_stop_strings_completed_in_one_token_cut_at_the_earlier_start)
{
    const char *text = "Hello world, again";
    static const char *const a[] = {"rld", "o w"};
    static const char *const b[] = {"o w", "rld"};
    static const char *const c[] = {"world", "wor", "ld"};
    check_stop(text, a, 2, strlen("Hell"));
    check_stop(text, b, 2, strlen("Hell"));
    check_stop(text, c, 3, strlen("Hello "));
}
END_TEST

START_TEST(test_stop_string_at_the_very_start_gives_empty_text)
{
    static const char *const stops[] = {"Hello"};
    check_stop("Hello world", stops, 1, 0);
}
END_TEST

START_TEST(test_multibyte_stop_strings_cut_at_character_boundaries)
{
    static const char *const cjk[] = {"東京"};
    check_stop(TEXTS[3], cjk, 1, strlen("日本語のテキストです。"));
    static const char *const accent[] = {"résumé"};
    check_stop(TEXTS[2], accent, 1, strlen("Café naïve "));
    static const char *const emoji[] = {"🎉"};
    check_stop(TEXTS[4], emoji, 1, strlen("emoji 😀 "));
}
END_TEST

START_TEST(test_held_back_bytes_are_flushed_at_done)
{
    /* "world!" could still follow "world": those bytes wait, then come out at done */
    static const char *const stops[] = {"world!"};
    const char *text = "Hello world";
    size_t n;
    int *ids = encode(text, &n);
    run r;
    run_start(&r, tok, stops, 1);
    ck_assert_int_eq(run_feed(&r, ids, n), -1);
    /* at most strlen(stop) - 1 bytes are held back, and they are the text's tail */
    ck_assert_msg(r.out.len + strlen(stops[0]) - 1 >= strlen(text),
                  "held back more than %zu bytes: streamed '%s'", strlen(stops[0]) - 1,
                  r.out.buf);
    ck_assert_msg(r.out.len < strlen(text), "nothing held back although 'world' may grow into "
                  "'world!': streamed '%s'", r.out.buf);
    ck_assert(memcmp(r.out.buf, text, r.out.len) == 0);
    run_done(&r);
    check_invariants(&r, ids);
    ck_assert_str_eq(generation_text(r.g, NULL), text);
    ck_assert_int_eq(generation_finish_reason(r.g), ENGINE_FINISH_LENGTH);
    free(ids);
    generation_free(r.g);
}
END_TEST

/* "Hi " + the four byte tokens of 😀 (F0 9F 98 80) + "!" + the three of € (E2 82 AC). */
static size_t emoji_bytes_ids(int *ids)
{
    static const unsigned char bytes[] = {'H', 'i', ' ', 0xF0, 0x9F, 0x98, 0x80, '!',
                                          0xE2, 0x82, 0xAC};
    for (size_t i = 0; i < sizeof bytes; i++)
        ids[i] = byte_token(bytes[i]);
    return sizeof bytes;
}

/* Feeds ids one at a time; fails at the first on_text piece that is not whole UTF-8. */
static void check_pieces_whole_utf8(const int *ids, size_t n, const char *stop)
{
    run r;
    run_start(&r, tok, stop ? &stop : NULL, stop ? 1 : 0);
    for (size_t i = 0; i < n; i++) {
        ck_assert_int_eq(run_feed(&r, ids + i, 1), -1);
        ck_assert_msg(r.out.n_invalid == 0,
                      "after token %zu of %zu, stop string '%s': an on_text piece ends inside "
                      "a UTF-8 character: [%s]", i, n, stop ? stop : "(none)",
                      r.out.first_invalid);
    }
    run_done(&r);
    ck_assert_msg(r.out.n_invalid == 0, "at done: a piece split a UTF-8 character: [%s]",
                  r.out.first_invalid);
    check_invariants(&r, ids);
    generation_free(r.g);
}

START_TEST(test_emoji_split_across_byte_tokens_is_never_emitted_half_without_stop_strings)
{
    int ids[16];
    size_t n = emoji_bytes_ids(ids);
    check_pieces_whole_utf8(ids, n, NULL);
}
END_TEST

/* The stream decoder holds the emoji's bytes until all four are there; the text held back
 * for a possible stop string must also end on a character boundary. */
START_TEST(test_emoji_split_across_byte_tokens_is_never_emitted_half_with_stop_strings)
{
    int ids[16];
    size_t n = emoji_bytes_ids(ids);
    static const char *const stops[] = {"zz", "zzz", "zzzz"};
    for (int s = 0; s < 3; s++)
        check_pieces_whole_utf8(ids, n, stops[s]);
}
END_TEST

/* The same with whole-character tokens of real text: a byte count of held-back tail must
 * not cut é, 日 or 😀 in two. */
START_TEST(test_streamed_pieces_are_whole_utf8_characters_with_a_stop_string)
{
    for (int t = 0; t < N_TEXTS; t++) {
        size_t n;
        int *ids = encode(TEXTS[t], &n);
        check_pieces_whole_utf8(ids, n, "@@never@@");
        free(ids);
    }
}
END_TEST

START_TEST(test_stop_string_completed_by_the_last_byte_of_an_emoji)
{
    static const char *const stops[] = {"😀"};
    int ids[16];
    size_t n = emoji_bytes_ids(ids);
    run r;
    run_start(&r, tok, stops, 1);
    ck_assert_int_eq(run_feed(&r, ids, n), 6);   /* 0x80, the 4th byte of the emoji */
    run_done(&r);
    check_invariants(&r, ids);
    ck_assert_str_eq(generation_text(r.g, NULL), "Hi ");
    ck_assert_int_eq(generation_finish_reason(r.g), ENGINE_FINISH_STOP);
    generation_free(r.g);
}
END_TEST

/* Llama 2 style byte fallback: generation ends (max_tokens) on the four <0xNN> tokens of 😀.
 * The stream holds the run until done, so the stop string only appears in the flushed
 * text; it must still cut the text and the finish reason must say a stop string matched. */
START_TEST(test_stop_string_in_the_text_flushed_at_done_finishes_with_stop)
{
    static const char *const stops[] = {"😀"};
    static const char *const runs[] = {"<0xF0>", "<0x9F>", "<0x98>", "<0x80>"};
    int ids[8];
    ids[0] = tokenizer_token_id(tok_llama2, "\xe2\x96\x81Hi");   /* "▁Hi" */
    ck_assert_int_ge(ids[0], 0);
    for (int i = 0; i < 4; i++) {
        ids[1 + i] = tokenizer_token_id(tok_llama2, runs[i]);
        ck_assert_int_ge(ids[1 + i], 0);
    }
    generation_options o = {.tok = tok_llama2, .n_stop = 1, .stop = {stops[0]},
                            .on_text = on_text};
    run r;
    memset(&r, 0, sizeof r);
    r.stopped_at = -1;
    o.user = &r.out;
    lr_error err = {0};
    r.g = generation_new(&o, &err);
    ck_assert_msg(r.g != NULL, "generation_new: %s", err.msg);
    generation_attach(r.g, &r.req);
    ck_assert_int_eq(run_feed(&r, ids, 5), -1);   /* the run is still open: no text yet */
    run_done(&r);                                  /* LENGTH, as max_tokens would */
    check_invariants(&r, ids);
    ck_assert_str_eq(generation_text(r.g, NULL), "Hi");
    ck_assert_msg(generation_finish_reason(r.g) == ENGINE_FINISH_STOP,
                  "text was cut by stop string '%s' at done but finish reason is %d, not "
                  "ENGINE_FINISH_STOP (%d)", stops[0], (int)generation_finish_reason(r.g),
                  (int)ENGINE_FINISH_STOP);
    generation_free(r.g);
}
END_TEST

START_TEST(test_special_tokens_are_collected_but_not_in_the_text)
{
    int bot = tokenizer_token_id(tok, "<|begin_of_text|>");
    int eot = tokenizer_token_id(tok, "<|end_of_text|>");
    ck_assert_int_ge(bot, 0);
    ck_assert_int_ge(eot, 0);
    size_t n;
    int *body = encode("Hello world", &n);
    int ids[32];
    ids[0] = bot;
    memcpy(ids + 1, body, n * sizeof *ids);
    ids[n + 1] = eot;
    static const char *const stops[] = {"xx"};
    run r;
    run_start(&r, tok, stops, 1);
    ck_assert_int_eq(run_feed(&r, ids, n + 2), -1);
    run_done(&r);
    check_invariants(&r, ids);
    ck_assert_str_eq(generation_text(r.g, NULL), "Hello world");
    free(body);
    generation_free(r.g);
}
END_TEST

START_TEST(test_without_tokenizer_tokens_are_collected_and_there_is_no_text)
{
    static const int ids[] = {5, 7, 11, 13};
    run r;
    run_start(&r, NULL, NULL, 0);
    ck_assert_int_eq(run_feed(&r, ids, 4), -1);
    run_done(&r);
    check_invariants(&r, ids);
    size_t len = 99;
    ck_assert_str_eq(generation_text(r.g, &len), "");
    ck_assert_uint_eq(len, 0);
    ck_assert_int_eq(r.out.n_pieces, 0);
    ck_assert_int_eq(generation_finish_reason(r.g), ENGINE_FINISH_LENGTH);
    generation_free(r.g);
}
END_TEST

START_TEST(test_error_finish_is_reported_with_its_message_and_keeps_the_output)
{
    size_t n;
    int *ids = encode("Hello world", &n);
    run r;
    run_start(&r, tok, NULL, 0);
    ck_assert_int_eq(run_feed(&r, ids, n), -1);
    lr_error e = {0};
    lr_error_set(&e, LR_EIO, "engine step failed");
    r.req.on_done(r.req.user, ENGINE_FINISH_ERROR, &e);
    ck_assert_int_eq(generation_finished(r.g), 1);
    ck_assert_int_eq(generation_finish_reason(r.g), ENGINE_FINISH_ERROR);
    ck_assert_int_eq(generation_error(r.g)->code, LR_EIO);
    ck_assert_str_eq(generation_error(r.g)->msg, "engine step failed");
    /* what came before the error is kept and was streamed, as in any other finish */
    check_invariants(&r, ids);
    ck_assert_str_eq(generation_text(r.g, NULL), "Hello world");
    free(ids);
    generation_free(r.g);
}
END_TEST

/* ---- limits ---- */

static void check_refused(const tokenizer *t, const char *const *stops, int n_stop,
                          const char *needle)
{
    generation_options o = {.tok = t, .n_stop = n_stop};
    for (int i = 0; i < n_stop && i < GENERATION_MAX_STOP; i++)
        o.stop[i] = stops[i];
    lr_error err = {0};
    generation *g = generation_new(&o, &err);
    ck_assert_msg(g == NULL, "generation_new accepted %d stop strings (needle '%s')", n_stop,
                  needle);
    generation_free(g);   /* accepts the NULL of a refusal */
    ck_assert_int_eq(err.code, LR_EINVAL);
    ck_assert_msg(strstr(err.msg, needle) != NULL, "message '%s' lacks '%s'", err.msg, needle);
}

START_TEST(test_empty_stop_string_is_refused)
{
    static const char *const stops[] = {"ok", ""};
    check_refused(tok, stops, 2, "empty");
}
END_TEST

START_TEST(test_more_than_max_stop_strings_are_refused_max_accepted)
{
    static const char *const stops[GENERATION_MAX_STOP + 1] = {"a", "b", "c", "d", "e", "f",
                                                               "g", "h", "i"};
    check_refused(tok, stops, GENERATION_MAX_STOP + 1, "stop strings");
    check_refused(tok, stops, -1, "stop strings");
    generation_options o = {.tok = tok, .n_stop = GENERATION_MAX_STOP};
    for (int i = 0; i < GENERATION_MAX_STOP; i++)
        o.stop[i] = stops[i];
    lr_error err = {0};
    generation *g = generation_new(&o, &err);
    ck_assert_msg(g != NULL, "%d stop strings refused: %s", GENERATION_MAX_STOP, err.msg);
    generation_free(g);
}
END_TEST

START_TEST(test_stop_strings_without_tokenizer_are_refused)
{
    static const char *const stops[] = {"x"};
    check_refused(NULL, stops, 1, "tokenizer");
}
END_TEST

START_TEST(test_id_outside_the_tokenizer_vocab_is_collected_without_text)
{
    /* a model's vocab may be larger than its tokenizer's (padding rows) */
    int ids[3];
    ids[0] = byte_token('o');
    ids[1] = tokenizer_vocab_size(tok) + 5;
    ids[2] = byte_token('k');
    static const char *const stops[] = {"zz"};
    run r;
    run_start(&r, tok, stops, 1);
    ck_assert_int_eq(run_feed(&r, ids, 3), -1);
    run_done(&r);
    check_invariants(&r, ids);
    ck_assert_str_eq(generation_text(r.g, NULL), "ok");
    generation_free(r.g);
}
END_TEST

static Suite *generation_suite(void)
{
    Suite *s = suite_create("generation");
    TCase *core = tcase_create("core"), *limits = tcase_create("limits");
    tcase_set_timeout(core, 120);
    tcase_set_timeout(limits, 120);
    tcase_add_test(core, test_without_stop_strings_text_equals_tokenizer_decode);
    tcase_add_test(core, test_with_stop_strings_that_never_occur_text_equals_tokenizer_decode);
    tcase_add_test(core, test_stop_world_cuts_text_before_it_at_the_completing_token);
    tcase_add_test(core, test_stop_string_spanning_two_tokens);
    tcase_add_test(core, test_stop_string_spanning_three_tokens_in_code);
    tcase_add_test(core, test_earliest_stop_string_wins_in_either_order);
    tcase_add_test(core, test_two_stop_strings_completed_in_one_token_cut_at_the_earlier_start);
    tcase_add_test(core, test_stop_string_at_the_very_start_gives_empty_text);
    tcase_add_test(core, test_multibyte_stop_strings_cut_at_character_boundaries);
    tcase_add_test(core, test_held_back_bytes_are_flushed_at_done);
    tcase_add_test(core,
                   test_emoji_split_across_byte_tokens_is_never_emitted_half_without_stop_strings);
    tcase_add_test(core,
                   test_emoji_split_across_byte_tokens_is_never_emitted_half_with_stop_strings);
    tcase_add_test(core, test_streamed_pieces_are_whole_utf8_characters_with_a_stop_string);
    tcase_add_test(core, test_stop_string_completed_by_the_last_byte_of_an_emoji);
    tcase_add_test(core, test_stop_string_in_the_text_flushed_at_done_finishes_with_stop);
    tcase_add_test(core, test_special_tokens_are_collected_but_not_in_the_text);
    tcase_add_test(core, test_without_tokenizer_tokens_are_collected_and_there_is_no_text);
    tcase_add_test(core, test_error_finish_is_reported_with_its_message_and_keeps_the_output);
    tcase_add_test(limits, test_empty_stop_string_is_refused);
    tcase_add_test(limits, test_more_than_max_stop_strings_are_refused_max_accepted);
    tcase_add_test(limits, test_stop_strings_without_tokenizer_are_refused);
    tcase_add_test(limits, test_id_outside_the_tokenizer_vocab_is_collected_without_text);
    suite_add_tcase(s, core);
    suite_add_tcase(s, limits);
    return s;
}

int main(void)
{
    lr_error err = {0};
    tok = tokenizer_load(TOK_DIR, &err);
    if (tok)
        tok_llama2 = tokenizer_load(TOK_LLAMA2_DIR, &err);
    if (!tok || !tok_llama2) {
        fprintf(stderr, "test_generation: %s\n", err.msg);
        tokenizer_free(tok);
        return 1;
    }
    SRunner *r = srunner_create(generation_suite());
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    tokenizer_free(tok_llama2);
    tokenizer_free(tok);
    return failed ? 1 : 0;
}
