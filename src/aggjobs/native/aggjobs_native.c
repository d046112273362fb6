/*
 * aggjobs_native: the two per-element loops of aggjobs' rollups, in C.
 *
 * The portable SQL path (src/aggjobs/sql/rollup.py) computes an hour's exact p95 and its
 * log-bucket sketch with one SQL row per run, and a day's p95 by unnesting 24 sketches into
 * (key, count) rows. These functions do the same work in one call per group and return the
 * same values bit for bit (tests/integration/test_native.py):
 *
 *   digest(vals, q)        percentile_cont(q) of vals and their sketch (keys, counts)
 *   digest_of(x, q)        aggregate: the same of a group's values x, collected in C (1.3)
 *   sketch_merge(k, c)     aggregate: sketches merged, counts summed per key
 *   sketch_quantile(k,c,q) aggjobs.sketch_quantile
 *   set_union(s), set_of(v) aggregates: a set of bigint, ascending and distinct (1.2)
 *   numeric_sum(x)         aggregate: sum(numeric), in a 128-bit integer while it fits (1.4)
 *
 * The arithmetic is PostgreSQL's own: percentile_cont_final_common and float8_lerp for the
 * exact quantile, aggjobs.sketch_key / sketch_value / sketch_quantile (migration 0001) for
 * the sketch; the Makefile turns off fused multiply-add so that every step rounds alike.
 */
#include "postgres.h"

#include <float.h>
#include <math.h>

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/array.h"
#include "utils/float.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/lsyscache.h"

PG_MODULE_MAGIC;

#define KEY_LOW (-32768)	/* values <= 1e-9 */
#define KEY_HIGH 32767		/* +Infinity and NaN */
#define GAMMA 1.015

static double ln_gamma;		/* ln(1.015), as SQL's ln() computes it */

void		_PG_init(void);
static void numsum_init(void);

void
_PG_init(void)
{
	ln_gamma = log(GAMMA);
	numsum_init();
}

/*
 * aggjobs.sketch_key (SQL: NaN = NaN is true, so NaN shares +Infinity's bucket; finite values
 * past 1.015^32766 share the top finite bucket, migration 0009).
 */
static inline int32
sketch_key(double x)
{
	double		k;

	if (x <= 1e-9)
		return KEY_LOW;
	if (isnan(x) || isinf(x))
		return KEY_HIGH;
	k = ceil(log(x) / ln_gamma);
	return (int32) (k > KEY_HIGH - 1 ? KEY_HIGH - 1 : k);
}

/* aggjobs.sketch_value */
static inline double
sketch_value(int32 k)
{
	if (k == KEY_LOW)
		return 0.0;
	if (k == KEY_HIGH)
		return get_float8_infinity();
	return 2 * pow(GAMMA, (double) k) / 2.015;
}

/* PostgreSQL's float8 ordering: NaN equals NaN and sorts above everything, -0 equals 0. */
static int
float8_order(const void *a, const void *b)
{
	return float8_cmp_internal(*(const float8 *) a, *(const float8 *) b);
}

static void
check_quantile(double q)
{
	if (isnan(q) || q < 0 || q > 1)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("percentile value %g is not between 0 and 1", q)));
}

static ArrayType *
int4_array(int32 *items, int n)
{
	Datum	   *d = palloc(sizeof(Datum) * n);

	for (int i = 0; i < n; i++)
		d[i] = Int32GetDatum(items[i]);
	return construct_array(d, n, INT4OID, sizeof(int32), true, TYPALIGN_INT);
}

static ArrayType *
int8_array(int64 *items, int n)
{
	Datum	   *d = palloc(sizeof(Datum) * n);

	for (int i = 0; i < n; i++)
		d[i] = Int64GetDatum(items[i]);
	return construct_array(d, n, INT8OID, sizeof(int64), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE);
}

static Datum
composite(FunctionCallInfo fcinfo, Datum *values, bool *nulls)
{
	TupleDesc	desc;

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "aggjobs_native: a composite result type is required");
	desc = BlessTupleDesc(desc);
	return HeapTupleGetDatum(heap_form_tuple(desc, values, nulls));
}

/* The float8[] argument as a C array; NULL elements are refused (the caller filters them). */
static float8 *
float8_elements(ArrayType *arr, int *n)
{
	Datum	   *elems;
	bool	   *nulls;
	float8	   *out;

	if (ARR_ELEMTYPE(arr) != FLOAT8OID)
		elog(ERROR, "aggjobs_native.digest: float8[] expected");
	deconstruct_array(arr, FLOAT8OID, sizeof(float8), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE,
					  &elems, &nulls, n);
	out = palloc(sizeof(float8) * (*n > 0 ? *n : 1));
	for (int i = 0; i < *n; i++)
	{
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("aggjobs_native.digest: NULL element at position %d", i + 1)));
		out[i] = DatumGetFloat8(elems[i]);
	}
	return out;
}

/*
 * The digest of n values (n > 0), sorted here in place: (quantile, keys, counts) into
 * values[0 .. 2].
 */
static void
digest_fields(float8 *v, int n, double q, Datum *values)
{
	qsort(v, n, sizeof(float8), float8_order);

	{
		/* percentile_cont_final_common, with float8_lerp */
		int64		first_row = floor(q * (n - 1));
		int64		second_row = ceil(q * (n - 1));

		if (first_row == second_row)
			values[0] = Float8GetDatum(v[first_row]);
		else
		{
			double		proportion = (q * (n - 1)) - first_row;

			values[0] = Float8GetDatum(v[first_row] + (proportion * (v[second_row] - v[first_row])));
		}
	}
	{
		/* keys ascend with the sorted values: count runs of equal keys */
		int32	   *keys = palloc(sizeof(int32) * n);
		int64	   *counts = palloc(sizeof(int64) * n);
		int			m = 0;

		for (int i = 0; i < n; i++)
		{
			int32		k = sketch_key(v[i]);

			if (m > 0 && keys[m - 1] == k)
				counts[m - 1]++;
			else
			{
				keys[m] = k;
				counts[m++] = 1;
			}
		}
		values[1] = PointerGetDatum(int4_array(keys, m));
		values[2] = PointerGetDatum(int8_array(counts, m));
	}
}

/* The digest of n values (n > 0) as the function's composite result. */
static Datum
digest_values(FunctionCallInfo fcinfo, float8 *v, int n, double q)
{
	Datum		values[3];
	bool		nulls[3] = {false, false, false};

	digest_fields(v, n, q, values);
	return composite(fcinfo, values, nulls);
}

PG_FUNCTION_INFO_V1(aggjobs_digest);

/*
 * digest(vals float8[], q float8) -> (quantile, keys, counts); all NULL for NULL or empty
 * vals, as the SQL path gives for a group without values.
 */
Datum
aggjobs_digest(PG_FUNCTION_ARGS)
{
	Datum		values[3];
	bool		nulls[3] = {true, true, true};
	float8	   *v;
	int			n;
	double		q;

	if (PG_ARGISNULL(1))
		PG_RETURN_NULL();
	q = PG_GETARG_FLOAT8(1);
	check_quantile(q);
	if (PG_ARGISNULL(0))
		return composite(fcinfo, values, nulls);
	v = float8_elements(PG_GETARG_ARRAYTYPE_P(0), &n);
	if (n == 0)
		return composite(fcinfo, values, nulls);
	return digest_values(fcinfo, v, n, q);
}

/* digest_of's state: the group's values so far, unordered, and the quantile asked for. */
typedef struct Values
{
	int			n;
	int			cap;
	double		q;
	float8	   *items;
} Values;

PG_FUNCTION_INFO_V1(aggjobs_digest_of_step);

/*
 * digest_of's transition: one value kept (NULLs skipped, as the SQL path's FILTER). The
 * values grow in one array in the aggregate's memory, where array_agg (collect, 1.1) gives
 * each group a memory context of its own: at 50,000 groups an hour, a large part of the
 * aggregate's time (docs/native.md).
 */
Datum
aggjobs_digest_of_step(PG_FUNCTION_ARGS)
{
	MemoryContext agg_context;
	Values	   *state = PG_ARGISNULL(0) ? NULL : (Values *) PG_GETARG_POINTER(0);

	if (!AggCheckCallContext(fcinfo, &agg_context))
		elog(ERROR, "aggjobs_native.digest_of_step called outside an aggregate");
	if (PG_ARGISNULL(1))
	{
		if (state == NULL)
			PG_RETURN_NULL();	/* no value yet: the state stays NULL, not a NULL pointer */
		PG_RETURN_POINTER(state);
	}
	if (state == NULL)
	{
		if (PG_ARGISNULL(2))
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("aggjobs_native.digest_of: the quantile is NULL")));
		check_quantile(PG_GETARG_FLOAT8(2));
		state = MemoryContextAlloc(agg_context, sizeof(Values));
		state->n = 0;
		state->cap = 16;
		state->q = PG_GETARG_FLOAT8(2);
		state->items = MemoryContextAlloc(agg_context, sizeof(float8) * state->cap);
	}
	else if (state->n == state->cap)
	{
		if (state->cap > (int) (MaxAllocSize / sizeof(float8) / 2))
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("aggjobs_native.digest_of: too many values in one group")));
		state->cap *= 2;
		state->items = repalloc(state->items, sizeof(float8) * state->cap);
	}
	state->items[state->n++] = PG_GETARG_FLOAT8(1);
	PG_RETURN_POINTER(state);
}

PG_FUNCTION_INFO_V1(aggjobs_digest_of_final);

/* digest_of's result: digest(values, q), or NULL when the group had no value. */
Datum
aggjobs_digest_of_final(PG_FUNCTION_ARGS)
{
	Values	   *state;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	state = (Values *) PG_GETARG_POINTER(0);
	return digest_values(fcinfo, state->items, state->n, state->q);
}

/*
 * The sum of the values in their order as the SQL path's float_sum makes it (schema.sql,
 * 0012): sum(x) over |x| < 2^960 ("small"), sum(x * 2^-64) over the rest ("big": larger
 * values, the infinities, NaN), then aggjobs.float_sum(small, big); the same constants,
 * comparisons (NaN above every number) and additions, so the same bits. False: NULL (no
 * value). sum() starts from its first value, not from 0 (-0.0 stays -0.0).
 */
#define FLOAT_SUM_SMALL 9.7453140114e+288	/* the SQL's literal for 2^960 */
#define FLOAT_SUM_SCALE 5.421010862427522e-20	/* the SQL's literal for 2^-64 */

static bool
float_sum(const float8 *v, int n, float8 *result)
{
	bool		any_small = false,
				any_big = false;
	float8		small = 0,
				big = 0,
				t;

	for (int i = 0; i < n; i++)
	{
		if (float8_lt(fabs(v[i]), FLOAT_SUM_SMALL))
		{
			small = any_small ? float8_pl(small, v[i]) : v[i];
			any_small = true;
		}
		else
		{
			float8		y = float8_mul(v[i], FLOAT_SUM_SCALE);

			big = any_big ? float8_pl(big, y) : y;
			any_big = true;
		}
	}
	if (!any_big)
	{
		*result = small;
		return any_small;
	}
	if (float8_eq(big, 0))
		*result = any_small ? small : 0;
	else if (!float8_lt(fabs(big), get_float8_infinity()))
		*result = big;
	else
	{
		t = float8_pl(big, any_small && float8_ge(fabs(small), pow(2, -900))
					  ? float8_mul(small, pow(2, -64)) : 0);
		if (float8_le(fabs(t), DBL_MAX * pow(2, -64)))
			*result = float8_mul(t, pow(2, 64));
		else
			*result = float8_gt(t, 0) ? get_float8_infinity() : -get_float8_infinity();
	}
	return true;
}

PG_FUNCTION_INFO_V1(aggjobs_digest_mean_of_final);

/*
 * digest_mean_of's result: digest_of's fields, then the values' float_sum and count, what
 * an average over the same column keeps (sum, n); NULL when the group had no value.
 */
Datum
aggjobs_digest_mean_of_final(PG_FUNCTION_ARGS)
{
	Values	   *state;
	Datum		values[5];
	bool		nulls[5] = {false, false, false, false, false};
	float8		sum;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	state = (Values *) PG_GETARG_POINTER(0);
	/* summed in their order before digest_fields sorts them */
	nulls[3] = !float_sum(state->items, state->n, &sum);
	values[3] = Float8GetDatum(sum);
	values[4] = Int64GetDatum(state->n);
	digest_fields(state->items, state->n, state->q, values);
	return composite(fcinfo, values, nulls);
}

/* A sketch as C arrays; keys strictly ascending. */
typedef struct Sketch
{
	int			n;
	int			cap;
	int32	   *keys;
	int64	   *counts;
} Sketch;

static void
sketch_reserve(Sketch *s, int cap)
{
	if (cap <= s->cap)
		return;
	cap = Max(cap, s->cap * 2);
	if (s->cap == 0)
	{
		s->keys = palloc(sizeof(int32) * cap);
		s->counts = palloc(sizeof(int64) * cap);
	}
	else
	{
		s->keys = repalloc(s->keys, sizeof(int32) * cap);
		s->counts = repalloc(s->counts, sizeof(int64) * cap);
	}
	s->cap = cap;
}

/* The (keys, counts) argument pair as C arrays, checked: same length, no NULLs. */
static int
sketch_arguments(ArrayType *ka, ArrayType *ca, int32 **keys, int64 **counts)
{
	int			nk = ArrayGetNItems(ARR_NDIM(ka), ARR_DIMS(ka));
	int			nc = ArrayGetNItems(ARR_NDIM(ca), ARR_DIMS(ca));

	if (nk != nc)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("aggjobs_native: a sketch has %d keys and %d counts", nk, nc)));
	if (ARR_HASNULL(ka) || ARR_HASNULL(ca))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("aggjobs_native: a sketch holds a NULL key or count")));
	if (nk > 0 && (ARR_ELEMTYPE(ka) != INT4OID || ARR_ELEMTYPE(ca) != INT8OID))
		elog(ERROR, "aggjobs_native: integer[] keys and bigint[] counts expected");
	*keys = (int32 *) ARR_DATA_PTR(ka);
	*counts = (int64 *) ARR_DATA_PTR(ca);
	return nk;
}

/*
 * Add a sketch (keys ascending) into s in place, for sketch_merge's sorted form (below: keys
 * too far apart for its array): the keys both hold are counted first, to know the merged
 * length, then the two are merged from the back, so that each of the state's entries is
 * moved once and read before anything is written over it.
 */
static void
sketch_add(Sketch *s, const int32 *keys, const int64 *counts, int n)
{
	int			common = 0,
				i = 0,
				j = 0,
				out;

	while (i < s->n && j < n)
	{
		if (s->keys[i] < keys[j])
			i++;
		else if (keys[j] < s->keys[i])
			j++;
		else
		{
			common++;
			i++;
			j++;
		}
	}
	sketch_reserve(s, s->n + n - common);
	i = s->n - 1;
	j = n - 1;
	out = s->n + n - common - 1;
	s->n = out + 1;
	/* once the sketch's keys are placed, what is left of the state is already in place */
	while (j >= 0)
	{
		if (i >= 0 && s->keys[i] > keys[j])
		{
			s->keys[out] = s->keys[i];
			s->counts[out--] = s->counts[i--];
		}
		else if (i >= 0 && s->keys[i] == keys[j])
		{
			s->keys[out] = keys[j];
			s->counts[out--] = s->counts[i--] + counts[j--];
		}
		else
		{
			s->keys[out] = keys[j];
			s->counts[out--] = counts[j--];
		}
	}
}

/*
 * sketch_merge's state. A day's sketches hold keys close together (a few hundred apart: run
 * times within a few decades), so while their finite keys span at most DENSE_MAX the
 * counts are added into an array indexed by key: one store per (key, count) pair, where a
 * merge of sorted arrays compares each key of the state with the next one of the sketch,
 * an unpredictable branch per key that took half the day step's time. The array holds
 * 32-bit counts and a bitmap of the keys seen, in one allocation of a power of two bytes
 * (what palloc takes anyway), so that a day's state at 50,000 workspaces is 2 kB and the
 * day's groups fit in a refresh's work_mem. The two reserved keys (values <= 1e-9,
 * +Infinity and NaN) are counted apart, so as not to stretch the span. Keys spread further
 * (hostile run times), a negative count or counts adding up past 2^31 switch the state to
 * the merge of sorted arrays of 64-bit counts.
 */
#define DENSE_MAX 4096
#define DENSE_MIN_BYTES 512

typedef struct MergeState
{
	bool		sparse;			/* merged as sorted arrays (sketch_add) */
	Sketch		sorted;
	int32		base;			/* dense: slot i counts key base + i */
	int			span;
	int32	   *slots;
	uint8	   *seen;			/* a key that came with a count of 0 is kept, as the SQL merge keeps it */
	int64		total;			/* the counts added: below 2^31, no slot can overflow */
	int64		low,
				high;			/* KEY_LOW and KEY_HIGH */
	bool		seen_low,
				seen_high;
} MergeState;

static inline bool
dense_seen(const MergeState *st, int i)
{
	return (st->seen[i >> 3] >> (i & 7)) & 1;
}

/*
 * Slots for keys lo .. hi (finite), the counts so far kept at their keys; the slots the
 * allocation has room for beyond them go half below, half above.
 */
static void
dense_cover(MergeState *st, int32 lo, int32 hi)
{
	int32		need_lo = st->span > 0 ? Min(lo, st->base) : lo;
	int32		need_hi = st->span > 0 ? Max(hi, st->base + st->span - 1) : hi;
	int			need = need_hi - need_lo + 1;
	Size		bytes = DENSE_MIN_BYTES;
	int			span;
	int32		base;
	int32	   *slots;
	uint8	   *seen;

	if (st->span > 0 && lo >= st->base && hi < st->base + st->span)
		return;
	while (bytes < (Size) need * 4 + need / 8 + 1)
		bytes *= 2;
	span = (int) (bytes * 8 / 33);	/* 4 bytes and a bit a slot */
	base = need_lo - (span - need) / 2;
	base = Max(base, (int32) KEY_LOW + 1);
	base = Min(base, (int32) KEY_HIGH - span);
	slots = palloc0(bytes);
	seen = (uint8 *) (slots + span);
	for (int i = 0; i < st->span; i++)
	{
		int			j = st->base + i - base;

		slots[j] = st->slots[i];
		if (dense_seen(st, i))
			seen[j >> 3] |= 1 << (j & 7);
	}
	if (st->span > 0)
		pfree(st->slots);
	st->base = base;
	st->span = span;
	st->slots = slots;
	st->seen = seen;
}

/* The state's keys and counts in ascending order, into `out` (empty). */
static void
dense_emit(const MergeState *st, Sketch *out)
{
	int			n = st->seen_low + st->seen_high;

	for (int i = 0; i < st->span; i++)
		n += dense_seen(st, i);
	sketch_reserve(out, Max(n, 1));
	if (st->seen_low)
	{
		out->keys[out->n] = KEY_LOW;
		out->counts[out->n++] = st->low;
	}
	for (int i = 0; i < st->span; i++)
		if (dense_seen(st, i))
		{
			out->keys[out->n] = st->base + i;
			out->counts[out->n++] = st->slots[i];
		}
	if (st->seen_high)
	{
		out->keys[out->n] = KEY_HIGH;
		out->counts[out->n++] = st->high;
	}
}

/* Whether a sketch's finite keys keys[first .. last], with these counts, fit the array. */
static bool
dense_fits(const MergeState *st, const int32 *keys, const int64 *counts, int first, int last)
{
	int64		sum = 0;
	int32		lo = st->span > 0 ? Min(keys[first], st->base) : keys[first];
	int32		hi = st->span > 0 ? Max(keys[last], st->base + st->span - 1) : keys[last];

	/* keys past the reserved ones are no sketch_key's, but are merged all the same */
	if ((int64) hi - lo >= DENSE_MAX || keys[first] < KEY_LOW || keys[last] > KEY_HIGH)
		return false;
	for (int i = first; i <= last; i++)
	{
		if (counts[i] < 0 || counts[i] > PG_INT32_MAX)
			return false;
		sum += counts[i];
	}
	return st->total + sum <= PG_INT32_MAX;
}

/* Add a sketch whose keys ascend. */
static void
merge_add(MergeState *st, const int32 *keys, const int64 *counts, int n)
{
	int			first = 0,
				last = n - 1;

	if (n == 0)
		return;
	if (st->sparse)
	{
		sketch_add(&st->sorted, keys, counts, n);
		return;
	}
	/* the reserved keys sort first and last */
	if (keys[first] == KEY_LOW)
	{
		st->low += counts[first++];
		st->seen_low = true;
	}
	if (last >= first && keys[last] == KEY_HIGH)
	{
		st->high += counts[last--];
		st->seen_high = true;
	}
	if (last < first)
		return;
	if (dense_fits(st, keys, counts, first, last))
	{
		dense_cover(st, keys[first], keys[last]);
		for (int i = first; i <= last; i++)
		{
			int			j = keys[i] - st->base;

			st->slots[j] += (int32) counts[i];
			st->seen[j >> 3] |= 1 << (j & 7);
			st->total += counts[i];
		}
		return;
	}
	/* from now on, sorted arrays (the reserved keys' counts included) */
	dense_emit(st, &st->sorted);
	if (st->span > 0)
		pfree(st->slots);
	st->sparse = true;
	sketch_add(&st->sorted, keys + first, counts + first, last - first + 1);
}

PG_FUNCTION_INFO_V1(aggjobs_sketch_merge_step);

/* sketch_merge's transition: merge one sketch into the state. */
Datum
aggjobs_sketch_merge_step(PG_FUNCTION_ARGS)
{
	MemoryContext agg_context;
	MemoryContext old;
	MergeState *state;
	int32	   *keys = NULL;
	int64	   *counts = NULL;
	int			n = 0;

	if (!AggCheckCallContext(fcinfo, &agg_context))
		elog(ERROR, "aggjobs_native.sketch_merge_step called outside an aggregate");
	/* detoasted in the row's memory, reset after it: only the state lives on */
	if (!PG_ARGISNULL(1) && !PG_ARGISNULL(2))
		n = sketch_arguments(PG_GETARG_ARRAYTYPE_P(1), PG_GETARG_ARRAYTYPE_P(2), &keys, &counts);
	for (int k = 1; k < n; k++)
		if (keys[k] <= keys[k - 1])
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("aggjobs_native.sketch_merge: keys must ascend")));
	old = MemoryContextSwitchTo(agg_context);
	state = PG_ARGISNULL(0) ? palloc0(sizeof(MergeState)) : (MergeState *) PG_GETARG_POINTER(0);
	merge_add(state, keys, counts, n);
	MemoryContextSwitchTo(old);
	PG_RETURN_POINTER(state);
}

PG_FUNCTION_INFO_V1(aggjobs_sketch_merge_final);

/* sketch_merge's result: (keys, counts), or NULL when no key was seen (as the SQL path). */
Datum
aggjobs_sketch_merge_final(PG_FUNCTION_ARGS)
{
	MergeState *state;
	Sketch		dense = {0};
	Sketch	   *merged;
	Datum		values[2];
	bool		nulls[2] = {false, false};

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	state = (MergeState *) PG_GETARG_POINTER(0);
	merged = &state->sorted;
	if (!state->sparse)
	{
		dense_emit(state, &dense);
		merged = &dense;
	}
	if (merged->n == 0)
		PG_RETURN_NULL();
	values[0] = PointerGetDatum(int4_array(merged->keys, merged->n));
	values[1] = PointerGetDatum(int8_array(merged->counts, merged->n));
	return composite(fcinfo, values, nulls);
}

/*
 * A set of bigint (user ids): values appended as they come, sorted and made distinct when
 * the buffer has doubled since it last was (so it holds at most about twice the distinct
 * values) and at the end. Replaces array_agg(DISTINCT v ORDER BY v), which sorts every
 * value of every group through a tuplesort (the day's user sets: a sort of all the hours'
 * members, to disk at 5,000 workspaces) and cannot be hashed.
 */
typedef struct IdSet
{
	int			n;
	int			cap;
	int			distinct_n;		/* n just after the last compaction */
	int64	   *items;
} IdSet;

static int
int64_order(const void *a, const void *b)
{
	int64		x = *(const int64 *) a;
	int64		y = *(const int64 *) b;

	return (x > y) - (x < y);
}

static void
idset_compact(IdSet *s)
{
	int			m = 0;

	if (s->n == 0)
		return;
	qsort(s->items, s->n, sizeof(int64), int64_order);
	for (int i = 0; i < s->n; i++)
		if (m == 0 || s->items[m - 1] != s->items[i])
			s->items[m++] = s->items[i];
	s->n = s->distinct_n = m;
}

static void
idset_add(IdSet *s, const int64 *items, int n)
{
	if (n == 0)
		return;
	if (s->n + n > s->cap)
	{
		if (s->n > 2 * s->distinct_n + 1024)
			idset_compact(s);
		if (s->n + n > s->cap)
		{
			int			cap = Max(s->n + n, Max(2 * s->cap, 16));

			s->items = s->cap == 0 ? palloc(sizeof(int64) * cap)
				: repalloc(s->items, sizeof(int64) * cap);
			s->cap = cap;
		}
	}
	memcpy(s->items + s->n, items, sizeof(int64) * n);
	s->n += n;
}

/* Add n members to the aggregate's state (made in its memory context on the first call). */
static Datum
idset_step(FunctionCallInfo fcinfo, const int64 *items, int n)
{
	MemoryContext agg_context;
	MemoryContext old;
	IdSet	   *state;

	if (!AggCheckCallContext(fcinfo, &agg_context))
		elog(ERROR, "aggjobs_native: a set aggregate's step called outside an aggregate");
	old = MemoryContextSwitchTo(agg_context);
	state = PG_ARGISNULL(0) ? palloc0(sizeof(IdSet)) : (IdSet *) PG_GETARG_POINTER(0);
	idset_add(state, items, n);
	MemoryContextSwitchTo(old);
	PG_RETURN_POINTER(state);
}

PG_FUNCTION_INFO_V1(aggjobs_set_union_step);

/*
 * set_union's transition: a set (bigint[], no NULL member) added; detoasted in the row's
 * memory, not the aggregate's.
 */
Datum
aggjobs_set_union_step(PG_FUNCTION_ARGS)
{
	ArrayType  *a;
	int			n;

	if (PG_ARGISNULL(1))
		return idset_step(fcinfo, NULL, 0);
	a = PG_GETARG_ARRAYTYPE_P(1);
	n = ArrayGetNItems(ARR_NDIM(a), ARR_DIMS(a));
	if (ARR_HASNULL(a))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("aggjobs_native.set_union: a set holds a NULL member")));
	if (n > 0 && ARR_ELEMTYPE(a) != INT8OID)
		elog(ERROR, "aggjobs_native.set_union: bigint[] expected");
	return idset_step(fcinfo, (int64 *) ARR_DATA_PTR(a), n);
}

PG_FUNCTION_INFO_V1(aggjobs_set_of_step);

/* set_of's transition: one value added (NULLs are skipped, as the FILTER of the SQL). */
Datum
aggjobs_set_of_step(PG_FUNCTION_ARGS)
{
	int64		v;

	if (PG_ARGISNULL(1))
		return idset_step(fcinfo, NULL, 0);
	v = PG_GETARG_INT64(1);
	return idset_step(fcinfo, &v, 1);
}

PG_FUNCTION_INFO_V1(aggjobs_set_final);

/* The members ascending and distinct, or NULL when there is none (as array_agg's). */
Datum
aggjobs_set_final(PG_FUNCTION_ARGS)
{
	IdSet	   *state;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	state = (IdSet *) PG_GETARG_POINTER(0);
	idset_compact(state);
	if (state->n == 0)
		PG_RETURN_NULL();
	PG_RETURN_ARRAYTYPE_P(int8_array(state->items, state->n));
}

PG_FUNCTION_INFO_V1(aggjobs_sketch_quantile);

/* aggjobs.sketch_quantile(keys, counts, q), step for step. */
Datum
aggjobs_sketch_quantile(PG_FUNCTION_ARGS)
{
	int32	   *keys;
	int64	   *counts;
	int			n;
	int64		total = 0,
				seen = 0,
				lo_rank;
	double		pos,
				frac,
				lo_value = 0;
	bool		have_lo = false;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2))
		PG_RETURN_NULL();
	n = sketch_arguments(PG_GETARG_ARRAYTYPE_P(0), PG_GETARG_ARRAYTYPE_P(1), &keys, &counts);
	if (n == 0)
		PG_RETURN_NULL();
	for (int i = 0; i < n; i++)
		total += counts[i];
	pos = PG_GETARG_FLOAT8(2) * (double) (total - 1);
	lo_rank = (int64) floor(pos);
	frac = pos - (double) lo_rank;
	for (int i = 0; i < n; i++)
	{
		seen += counts[i];
		if (!have_lo && seen > lo_rank)
		{
			lo_value = sketch_value(keys[i]);
			have_lo = true;
			if (frac == 0)
				PG_RETURN_FLOAT8(lo_value);
		}
		if (have_lo && seen > lo_rank + 1)
			PG_RETURN_FLOAT8(lo_value + frac * (sketch_value(keys[i]) - lo_value));
	}
	if (!have_lo)
		PG_RETURN_NULL();
	PG_RETURN_FLOAT8(lo_value);
}

/*
 * numeric_sum: sum(numeric), the same value and display scale (the largest of its
 * values'), for the coarser grains' sums of numeric columns. PostgreSQL's sum keeps a state
 * and two arrays of digits apart from the group, each a cache miss a row once a day's
 * groups are past the processor's caches, and copies every short value to read it; this
 * state is one allocation holding the sum as an integer of its scale's units, read off the
 * value's stored digits in place. Past 10^36 units, or at a NaN or an infinity, the state
 * becomes PostgreSQL's own numeric_add of the values, which gives what sum gives.
 *
 * The layout read is numeric's on-disk format (src/backend/utils/adt/numeric.c, fixed by
 * pg_upgrade's compatibility): a 16-bit header, then for the long form a 16-bit weight,
 * then base-10000 digits, the first of weight `weight`.
 */
#ifdef HAVE_INT128
typedef int128 NumSumInt;
#define NUMSUM_MAX_UNITS_DIGITS 36	/* two sums below 10^36 add below 2^127 */
#else
typedef int64 NumSumInt;
#define NUMSUM_MAX_UNITS_DIGITS 17
#endif

typedef struct NumSum
{
	NumSumInt	units;			/* the sum times 10^scale */
	int			scale;			/* the largest display scale of the values so far */
	bool		exact;			/* false: `total` holds the sum, as numeric */
	Datum		total;
} NumSum;

#define NUMERIC_FORM_MASK 0xC000
#define NUMERIC_FORM_NEG 0x4000
#define NUMERIC_FORM_SHORT 0x8000
#define NUMERIC_FORM_SPECIAL 0xC000
#define NUMERIC_SHORT_NEG 0x2000
#define NUMERIC_SHORT_DSCALE_MASK 0x1F80
#define NUMERIC_SHORT_DSCALE_SHIFT 7
#define NUMERIC_SHORT_WEIGHT_SIGN 0x0040
#define NUMERIC_SHORT_WEIGHT_MASK 0x003F
#define NUMERIC_LONG_DSCALE_MASK 0x3FFF

static const int64 pow10_int64[19] = {
	1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000, 1000000000,
	INT64CONST(10000000000), INT64CONST(100000000000), INT64CONST(1000000000000),
	INT64CONST(10000000000000), INT64CONST(100000000000000),
	INT64CONST(1000000000000000), INT64CONST(10000000000000000),
	INT64CONST(100000000000000000), INT64CONST(1000000000000000000)
};

/* x * 10^e into *out, false past NUMSUM_MAX_UNITS_DIGITS digits */
static bool
numsum_shift(NumSumInt x, int e, NumSumInt *out)
{
	while (e > 0)
	{
		int			step = Min(e, 18);

		if (__builtin_mul_overflow(x, (NumSumInt) pow10_int64[step], &x))
			return false;
		e -= step;
	}
	*out = x;
	return true;
}

static NumSumInt numsum_bound;	/* 10^NUMSUM_MAX_UNITS_DIGITS, set at load (_PG_init) */

static bool
numsum_fits(NumSumInt x)
{
	return x < numsum_bound && x > -numsum_bound;
}

static void
numsum_init(void)
{
	(void) numsum_shift(1, NUMSUM_MAX_UNITS_DIGITS, &numsum_bound);
}

/*
 * The value of a finite numeric in units of 10^-scale (scale >= its display scale), or
 * false if it is NaN or infinite or too large.
 */
static bool
numeric_units(Datum d, int scale_at_least, NumSumInt *units, int *scale)
{
	struct varlena *v = (struct varlena *) DatumGetPointer(d);
	const char *p;
	int			len;
	uint16		header;
	int			weight,
				dscale,
				ndigits;
	bool		negative;
	NumSumInt	x = 0;

	if (VARATT_IS_EXTENDED(v) && !VARATT_IS_SHORT(v))
		v = pg_detoast_datum_packed(v);	/* compressed or toasted: rare for a numeric */
	p = VARDATA_ANY(v);
	len = VARSIZE_ANY_EXHDR(v);
	memcpy(&header, p, sizeof(uint16));
	if ((header & NUMERIC_FORM_MASK) == NUMERIC_FORM_SPECIAL)
		return false;
	if ((header & NUMERIC_FORM_MASK) == NUMERIC_FORM_SHORT)
	{
		negative = (header & NUMERIC_SHORT_NEG) != 0;
		dscale = (header & NUMERIC_SHORT_DSCALE_MASK) >> NUMERIC_SHORT_DSCALE_SHIFT;
		weight = (header & NUMERIC_SHORT_WEIGHT_MASK);
		if (header & NUMERIC_SHORT_WEIGHT_SIGN)
			weight |= ~NUMERIC_SHORT_WEIGHT_MASK;
		p += sizeof(uint16);
		len -= sizeof(uint16);
	}
	else
	{
		int16		w;

		negative = (header & NUMERIC_FORM_MASK) == NUMERIC_FORM_NEG;
		dscale = header & NUMERIC_LONG_DSCALE_MASK;
		memcpy(&w, p + sizeof(uint16), sizeof(int16));
		weight = w;
		p += sizeof(uint16) + sizeof(int16);
		len -= sizeof(uint16) + sizeof(int16);
	}
	ndigits = len / (int) sizeof(int16);
	*scale = Max(scale_at_least, dscale);
	if (*scale > NUMSUM_MAX_UNITS_DIGITS || (ndigits > 0 && 4 * (weight + 1) + *scale > NUMSUM_MAX_UNITS_DIGITS))
		return false;
	for (int i = 0; i < ndigits; i++)
	{
		int16		digit;
		int			e = 4 * (weight - i) + *scale;	/* digit i counts 10^e units */
		NumSumInt	term;

		memcpy(&digit, p + i * sizeof(int16), sizeof(int16));
		if (e >= 0)
		{
			if (!numsum_shift(digit, e, &term))
				return false;
		}
		else
		{
			/* below the display scale: only zeros are stored there */
			if (e < -3 || digit % pow10_int64[-e] != 0)
				return false;
			term = digit / pow10_int64[-e];
		}
		x += term;
	}
	*units = negative ? -x : x;
	return true;
}

/* The sum in units of 10^-scale as a numeric of that display scale. */
static Datum
numsum_numeric(NumSumInt units, int scale)
{
	char		buf[64];
	char	   *end = buf + sizeof(buf) - 1;
	char	   *q = end;
	bool		negative = units < 0;
	int			written = 0;

	*q = '\0';
	do
	{
		int			digit = (int) (units % 10);

		*--q = '0' + (negative ? -digit : digit);
		units /= 10;
		if (++written == scale)
			*--q = '.';
	} while (units != 0 || written < scale);
	if (scale > 0 && written == scale)
		*--q = '0';				/* 0.xx */
	if (negative)
		*--q = '-';
	return DirectFunctionCall3(numeric_in, CStringGetDatum(q),
							   ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1));
}

/* From now on the state adds with numeric_add: what sum(numeric) gives past the integer. */
static void
numsum_to_numeric(NumSum *st, MemoryContext agg_context)
{
	MemoryContext old = MemoryContextSwitchTo(agg_context);

	st->total = numsum_numeric(st->units, st->scale);
	st->exact = false;
	MemoryContextSwitchTo(old);
}

PG_FUNCTION_INFO_V1(aggjobs_numeric_sum_step);

Datum
aggjobs_numeric_sum_step(PG_FUNCTION_ARGS)
{
	MemoryContext agg_context;
	MemoryContext old;
	NumSum	   *st;
	NumSumInt	units,
				sum;
	int			scale;
	Datum		added;

	if (!AggCheckCallContext(fcinfo, &agg_context))
		elog(ERROR, "aggjobs_native.numeric_sum_step called outside an aggregate");
	st = PG_ARGISNULL(0) ? NULL : (NumSum *) PG_GETARG_POINTER(0);
	if (PG_ARGISNULL(1))
	{
		if (st == NULL)
			PG_RETURN_NULL();	/* no value yet: the state stays NULL, as sum's */
		PG_RETURN_POINTER(st);
	}
	if (st == NULL)
	{
		st = MemoryContextAllocZero(agg_context, sizeof(NumSum));
		st->exact = true;
	}
	if (st->exact
		&& numeric_units(PG_GETARG_DATUM(1), st->scale, &units, &scale)
		&& numsum_shift(st->units, scale - st->scale, &sum)
		&& !__builtin_add_overflow(sum, units, &sum)
		&& numsum_fits(sum))
	{
		st->units = sum;
		st->scale = scale;
		PG_RETURN_POINTER(st);
	}
	/* added in the row's memory (numeric_add copies a short value to read it), kept in the state's */
	if (st->exact)
		numsum_to_numeric(st, agg_context);
	added = DirectFunctionCall2(numeric_add, st->total, PG_GETARG_DATUM(1));
	old = MemoryContextSwitchTo(agg_context);
	pfree(DatumGetPointer(st->total));
	st->total = datumCopy(added, false, -1);
	MemoryContextSwitchTo(old);
	PG_RETURN_POINTER(st);
}

PG_FUNCTION_INFO_V1(aggjobs_numeric_sum_final);

/* The sum, NULL when no value was given (as sum). */
Datum
aggjobs_numeric_sum_final(PG_FUNCTION_ARGS)
{
	NumSum	   *st;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	st = (NumSum *) PG_GETARG_POINTER(0);
	if (!st->exact)
		PG_RETURN_DATUM(datumCopy(st->total, false, -1));
	PG_RETURN_DATUM(numsum_numeric(st->units, st->scale));
}
