import glob
import os
class Hyperparameters:
    data_path = os.environ.get("DATA_PATH", "./data/datasets/fineweb10B_sp1024")
    train_files = os.path.join(data_path, "fineweb_train_*.bin")
    val_files = os.path.join(data_path, "fineweb_val_*.bin")
def main():
    args = Hyperparameters()
    extra = sorted(glob.glob(args.val_files))
    files = sorted(glob.glob(args.train_files))
    print(f'{len(extra)} validation shards')
    train_loader = DistributedTokenLoader(files, 0, 1)
    val_loader = DistributedTokenLoader(args.val_files, 0, 1)
