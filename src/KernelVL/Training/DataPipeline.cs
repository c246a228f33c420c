using System.Collections.Concurrent;
using KernelVL.Data;
using KernelVL.Imaging;

namespace KernelVL.Training;

/// <summary>
/// Decoded, preprocessed images of a dataset split, loaded on worker threads and kept in memory up to a byte budget.
/// An image that is missing or fails to decode is reported once (warning callback) and skipped, or is an error when
/// strict.
/// </summary>
public sealed class ImageCache
{
    private readonly IReadOnlyList<DatasetImage> _images;
    private readonly string _root;
    private readonly ImagePreprocessor _pre;
    private readonly bool _strict;
    private readonly long _budget;
    private readonly ConcurrentDictionary<int, PreparedImage> _cache = new();
    private readonly ConcurrentDictionary<int, string> _failed = new();
    private long _bytes;

    public Action<string>? Warn { get; set; }

    public ImageCache(IReadOnlyList<DatasetImage> images, string root, ImagePreprocessor pre, bool strict, long budgetBytes = 4L << 30)
    {
        _images = images;
        _root = root;
        _pre = pre;
        _strict = strict;
        _budget = budgetBytes;
    }

    public int Count => _images.Count;
    public DatasetImage Info(int i) => _images[i];
    public int FailedCount => _failed.Count;
    public IReadOnlyDictionary<int, string> Failed => _failed;

    /// <summary>The preprocessed image, or null when it cannot be read (then skipped; strict: a <see cref="BadInputException"/>).</summary>
    public PreparedImage? Get(int i)
    {
        if (_cache.TryGetValue(i, out var p)) return p;
        if (_failed.ContainsKey(i)) return null;
        try
        {
            p = _pre.Load(Path.Combine(_root, _images[i].Path));
        }
        catch (BadInputException e)
        {
            if (_strict) throw;
            if (_failed.TryAdd(i, e.Message)) Warn?.Invoke($"skipped: {e.Message}");
            return null;
        }
        long size = p.Pixels.Length * 4L;
        if (Interlocked.Add(ref _bytes, size) <= _budget) _cache.TryAdd(i, p);
        else Interlocked.Add(ref _bytes, -size);
        return p;
    }

    /// <summary>Loads many images on worker threads (e.g. a whole evaluation split), in order; failures are null.</summary>
    public PreparedImage?[] GetMany(IReadOnlyList<int> indices, int workers, Action<int>? progress = null)
    {
        var r = new PreparedImage?[indices.Count];
        int done = 0;
        try
        {
            Parallel.For(0, indices.Count, new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, workers) }, k =>
            {
                r[k] = Get(indices[k]);
                int d = Interlocked.Increment(ref done);
                if (progress is not null && (d % 64 == 0 || d == indices.Count)) progress(d);
            });
        }
        catch (AggregateException e) when (e.InnerExceptions.FirstOrDefault(x => x is KernelVLException) is KernelVLException k)
        {
            throw k;   // strict mode: the first unreadable image, as its own error
        }
        return r;
    }
}

/// <summary>One training batch's items: dataset image index and the caption drawn for it.</summary>
public sealed record PairItem(int Image, string Caption);

/// <summary>A batch ready for the model: the items that survived loading, their images, and how many were skipped.</summary>
public sealed record LoadedBatch(IReadOnlyList<PairItem> Items, IReadOnlyList<PreparedImage> Images, int Skipped);

/// <summary>
/// Loads batches ahead of the trainer on a background thread (images decoded on worker threads), so decoding overlaps
/// compute; batches come out in order. Disposing stops the producer.
/// </summary>
public sealed class BatchPrefetcher : IDisposable
{
    private readonly BlockingCollection<LoadedBatch> _queue;
    private readonly CancellationTokenSource _cts = new();
    private readonly Task _producer;
    private Exception? _error;

    public BatchPrefetcher(IEnumerable<IReadOnlyList<PairItem>> batches, ImageCache cache, int workers, int depth = 2)
    {
        _queue = new BlockingCollection<LoadedBatch>(Math.Max(1, depth));
        _producer = Task.Factory.StartNew(() =>
        {
            try
            {
                foreach (var b in batches)
                {
                    if (_cts.IsCancellationRequested) break;
                    var imgs = cache.GetMany(b.Select(x => x.Image).ToList(), workers);
                    var items = new List<PairItem>(b.Count);
                    var kept = new List<PreparedImage>(b.Count);
                    for (int i = 0; i < b.Count; i++)
                    {
                        if (imgs[i] is null) continue;
                        items.Add(b[i]);
                        kept.Add(imgs[i]!);
                    }
                    _queue.Add(new LoadedBatch(items, kept, b.Count - items.Count), _cts.Token);
                }
            }
            catch (OperationCanceledException) { }
            catch (Exception e) { _error = e; }
            finally { _queue.CompleteAdding(); }
        }, TaskCreationOptions.LongRunning);
    }

    /// <summary>The next batch, or null at the end; rethrows a loading error (strict mode) on the caller's thread.</summary>
    public LoadedBatch? Next()
    {
        try
        {
            if (_queue.TryTake(out var b, Timeout.Infinite)) return b;
        }
        catch (InvalidOperationException) { }
        if (_error is not null) throw _error is KernelVLException k ? k : new KernelVLException($"loading a batch failed: {_error.Message}", _error);
        return null;
    }

    public void Dispose()
    {
        _cts.Cancel();
        try { _producer.Wait(); } catch (AggregateException) { }
        _queue.Dispose();
        _cts.Dispose();
    }
}
